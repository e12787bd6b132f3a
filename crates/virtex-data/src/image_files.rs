//! Image files given on a command line: expanding files and directories into a file list, and
//! loading a batch of them through a transform pipeline (the inference path of every `virtex`
//! command: features, captions, VOC07 evaluation).

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use rayon::prelude::*;

use crate::coco::{ImageId, IMAGE_EXTENSIONS};
use crate::collate::{collate_images, ImageBatch};
use crate::error::{DataError, Result};
use crate::image_io::load_image;
use crate::rng::SampleRng;
use crate::transforms::ImageTransforms;

/// Expands image files and directories into one sorted, deduplicated file list.
///
/// A directory contributes its files (not recursively) whose extension is one of
/// [`IMAGE_EXTENSIONS`] (case-insensitive); a file is taken as given, whatever its extension.
///
/// # Errors
/// [`DataError::Io`] naming a path that does not exist or a directory that cannot be listed;
/// [`DataError::NoImages`] when nothing is left.
pub fn collect_image_files<P: AsRef<Path>>(inputs: &[P]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for input in inputs {
        let input = input.as_ref();
        let metadata = std::fs::metadata(input).map_err(|e| DataError::io(input, e))?;
        if !metadata.is_dir() {
            files.push(input.to_path_buf());
            continue;
        }
        for entry in std::fs::read_dir(input).map_err(|e| DataError::io(input, e))? {
            let path = entry.map_err(|e| DataError::io(input, e))?.path();
            if path.is_file() && has_image_extension(&path) {
                files.push(path);
            }
        }
    }
    files.sort();
    files.dedup();
    if files.is_empty() {
        return Err(DataError::NoImages {
            inputs: inputs.iter().map(|p| p.as_ref().to_path_buf()).collect(),
        });
    }
    Ok(files)
}

fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

/// Loads image files ([`load_image`]: any colour type to RGB8, EXIF orientation applied,
/// truncated and corrupt files refused), transforms them and stacks them on `device`; ids are
/// the file stems ([`ImageId::from_file_stem`]). Decoding and transforms run on all cores; the
/// batch keeps the order of `paths`.
///
/// The transforms should be deterministic (e.g. [`ImageTransforms::downstream_val`]); random
/// ones draw from a generator fixed by the image's position in `paths`.
///
/// # Shapes
/// Returns images `[paths.len(), 3, H, W]`, `(H, W)` the transforms' output size.
///
/// # Errors
/// The error of a file that cannot be read or decoded, naming it (the first in `paths` order
/// is not guaranteed when several are bad); [`DataError::InvalidConfig`] when `paths` is empty
/// or the images end with different sizes.
pub fn load_image_batch<B: Backend, P: AsRef<Path> + Sync>(
    paths: &[P],
    transforms: &ImageTransforms,
    device: &B::Device,
) -> Result<ImageBatch<B>> {
    let images = paths
        .par_iter()
        .enumerate()
        .map(|(index, path)| {
            let path = path.as_ref();
            let image = load_image(path)?;
            let mut rng = SampleRng::for_sample(0, 0, index as u64);
            let image = transforms.try_apply_image(&image, &mut rng, Some(path))?;
            Ok((ImageId::from_file_stem(path), image))
        })
        .collect::<Result<Vec<_>>>()?;
    collate_images(images, device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    use crate::sample::sample_data_root;

    #[test]
    fn directories_expand_to_sorted_image_files_and_files_are_kept() {
        let directory = tempfile::tempdir().unwrap();
        for name in ["b.JPG", "a.png", "c.jpeg", "notes.txt"] {
            std::fs::write(directory.path().join(name), b"x").unwrap();
        }
        std::fs::create_dir(directory.path().join("nested.jpg")).unwrap();
        let extra = directory.path().join("notes.txt");
        let files =
            collect_image_files(&[directory.path().to_path_buf(), extra.clone(), extra.clone()])
                .unwrap();
        let names: Vec<_> = files
            .iter()
            .map(|p| p.file_name().unwrap().to_str().unwrap())
            .collect();
        assert_eq!(names, ["a.png", "b.JPG", "c.jpeg", "notes.txt"]);
    }

    #[test]
    fn missing_paths_and_empty_directories_are_errors_naming_them() {
        let directory = tempfile::tempdir().unwrap();
        let missing = directory.path().join("missing.jpg");
        let err = collect_image_files(&[&missing]).unwrap_err();
        assert!(matches!(err, DataError::Io { ref path, .. } if *path == missing));
        assert!(err.to_string().contains("missing.jpg"), "{err}");
        let err = collect_image_files(&[directory.path()]).unwrap_err();
        assert!(matches!(err, DataError::NoImages { .. }));
        let message = err.to_string();
        assert!(
            message.contains(&*directory.path().to_string_lossy()),
            "{message}"
        );
    }

    #[test]
    fn a_batch_equals_its_images_loaded_one_by_one_in_order() {
        let files = collect_image_files(&[sample_data_root().join("val2017")]).unwrap();
        let transforms = ImageTransforms::downstream_val(40, 32).unwrap();
        let device = Default::default();
        let batch = load_image_batch::<Flex, _>(&files, &transforms, &device).unwrap();
        assert_eq!(batch.images.dims(), [3, 3, 32, 32]);
        assert_eq!(
            batch.image_ids,
            [ImageId::Int(11), ImageId::Int(12), ImageId::Int(13)]
        );
        let values = batch.images.into_data().to_vec::<f32>().unwrap();
        for (index, path) in files.iter().enumerate() {
            let image = load_image(path).unwrap();
            let expected = transforms.apply_image(&image, &mut SampleRng::for_sample(0, 0, 0));
            let plane = expected.data.len();
            assert_eq!(
                &values[index * plane..(index + 1) * plane],
                &expected.data[..]
            );
        }
    }

    #[test]
    fn a_bad_file_fails_the_batch_naming_it() {
        let directory = tempfile::tempdir().unwrap();
        let good = sample_data_root().join("val2017/000000000011.jpg");
        let bytes = std::fs::read(&good).unwrap();
        let truncated = directory.path().join("truncated.jpg");
        std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
        let transforms = ImageTransforms::downstream_val(40, 32).unwrap();
        let err = load_image_batch::<Flex, _>(
            &[good, truncated.clone()],
            &transforms,
            &Default::default(),
        )
        .unwrap_err();
        assert!(matches!(err, DataError::TruncatedImage { ref path, .. } if *path == truncated));
        assert!(err.to_string().contains("truncated.jpg"), "{err}");
    }
}
