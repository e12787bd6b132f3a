//! Checks every command runs before any expensive work: sizes that cannot work, and output paths
//! that would destroy an input ([`virtex_device::check_output_path`]).
//!
//! The limits are also clap value ranges (a bad value is refused while parsing, with clap's
//! message); these functions repeat them for programs that build the argument structs directly.

use std::path::Path;

use crate::error::CliError;

/// The largest `--short-side` / `--crop` the commands accept: one 4096² image is 200 MB of f32
/// pixels, already far beyond what the backbones were trained on (224).
pub const MAX_IMAGE_SIDE: u32 = 4096;

/// The clap value parser of `--short-side` and `--crop`: `1..=MAX_IMAGE_SIDE`.
pub(crate) fn image_side_parser() -> clap::builder::RangedI64ValueParser<u32> {
    clap::value_parser!(u32).range(1..=i64::from(MAX_IMAGE_SIDE))
}

/// The clap value parser of counts that must be at least 1 (`--batch-size`, `--beam-size`).
pub(crate) fn positive_count_parser() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::<usize>::new().range(1..)
}

/// The clap value parser of `--max-image-pixels`: at least 1.
pub(crate) fn max_image_pixels_parser() -> clap::builder::RangedU64ValueParser<u64> {
    clap::value_parser!(u64).range(1..)
}

/// Makes `--max-image-pixels` the limit of every image decode and resize of this process
/// ([`virtex_data::set_image_limits`]); `None` leaves the limit in force (virtex-data's default,
/// PIL's decompression-bomb threshold, unless the program set another).
pub(crate) fn apply_image_limit(max_image_pixels: Option<u64>) -> Result<(), CliError> {
    if let Some(max_pixels) = max_image_pixels {
        virtex_data::set_image_limits(virtex_data::ImageLimits::new(max_pixels)?);
    }
    Ok(())
}

/// `short_side` and `crop` in `1..=MAX_IMAGE_SIDE`, and the crop no larger than the short side.
pub(crate) fn check_image_sizes(short_side: u32, crop: u32) -> Result<(), CliError> {
    for (option, value) in [("--short-side", short_side), ("--crop", crop)] {
        if !(1..=MAX_IMAGE_SIDE).contains(&value) {
            return Err(CliError::InvalidArgument {
                option,
                value: value.to_string(),
                reason: format!("must be between 1 and {MAX_IMAGE_SIDE} pixels"),
            });
        }
    }
    if crop > short_side {
        return Err(CliError::InvalidArgument {
            option: "--crop",
            value: crop.to_string(),
            reason: format!("must not exceed --short-side ({short_side})"),
        });
    }
    Ok(())
}

/// A count option (`--batch-size`, `--beam-size`) of at least 1.
pub(crate) fn check_positive(option: &'static str, value: usize) -> Result<(), CliError> {
    if value == 0 {
        return Err(CliError::InvalidArgument {
            option,
            value: value.to_string(),
            reason: "must be at least 1".into(),
        });
    }
    Ok(())
}

/// [`virtex_device::check_output_path`] as a [`CliError`].
pub(crate) fn check_output(output: &Path, inputs: &[&Path]) -> Result<(), CliError> {
    virtex_device::check_output_path(output, inputs).map_err(CliError::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        check_image_sizes(256, 224).unwrap();
        check_image_sizes(MAX_IMAGE_SIDE, MAX_IMAGE_SIDE).unwrap();
        check_image_sizes(1, 1).unwrap();
        for (short_side, crop, option) in [
            (256, 0, "--crop"),
            (0, 0, "--short-side"),
            (100_000, 224, "--short-side"),
            (224, 256, "--crop"),
        ] {
            let err = check_image_sizes(short_side, crop).unwrap_err();
            assert!(
                matches!(&err, CliError::InvalidArgument { option: o, .. } if *o == option),
                "{short_side} {crop}: {err}"
            );
        }
        check_positive("--batch-size", 1).unwrap();
        let err = check_positive("--batch-size", 0).unwrap_err().to_string();
        assert_eq!(err, "invalid --batch-size 0: must be at least 1");
    }
}
