//! Sample captions at every validation (`train.sample_captions`): a fixed set of validation
//! images, captioned by the model being trained, recorded in `metrics.jsonl`
//! (`"kind":"samples"`) and shown in `samples.html` with thumbnails in `samples/`, so a run can
//! be watched by what it says, not only by its loss.

use std::path::{Path, PathBuf};

use burn::prelude::*;
use virtex::{CaptioningModel, DecodingConfig};
use virtex_data::{DataLoader, ImageId};

use crate::checkpoint::write_file_atomically;
use crate::error::TrainError;
use crate::metrics::{MetricsLog, SampleCaption, SamplesRecord};

/// The sample-captions page of a run directory.
pub const SAMPLES_PAGE: &str = "samples.html";
/// The directory of the thumbnails the page shows, inside the run directory.
pub const THUMBNAIL_DIR: &str = "samples";
/// Longest side of a thumbnail in pixels: enough to recognise the scene, small enough that
/// the page stays light when a run directory is copied around.
const THUMBNAIL_SIDE: u32 = 192;

/// A pretext model that can caption images, for the sample captions of a run.
pub trait SampleCaptioner<B: Backend> {
    /// The token ids of one caption per image, each cut before its `[EOS]`; `None` when the
    /// model has no captioning head (a pretext task without one records no samples).
    ///
    /// # Shapes
    /// - `images`: `[N, 3, H, W]`, transformed as the validation split is.
    fn sample_captions(&self, images: Tensor<B, 4>) -> Result<Option<Vec<Vec<u32>>>, TrainError>;
}

/// A masked language model fills in blanks, it does not write captions: no samples.
impl<B: Backend> SampleCaptioner<B> for virtex::MaskedLmModel<B> {
    fn sample_captions(&self, _images: Tensor<B, 4>) -> Result<Option<Vec<Vec<u32>>>, TrainError> {
        Ok(None)
    }
}

/// A classifier writes no captions: its runs record no samples.
impl<B: Backend> SampleCaptioner<B> for virtex::ClassificationModel<B> {
    fn sample_captions(&self, _images: Tensor<B, 4>) -> Result<Option<Vec<Vec<u32>>>, TrainError> {
        Ok(None)
    }
}

impl<B: Backend> SampleCaptioner<B> for CaptioningModel<B> {
    /// Greedy decoding with the forward head: deterministic, so a caption that changes between
    /// validations reflects the model, and the cheapest of the decoders (beam search would
    /// cost five times as much at every validation).
    fn sample_captions(&self, images: Tensor<B, 4>) -> Result<Option<Vec<Vec<u32>>>, TrainError> {
        let decoding = DecodingConfig {
            sos_index: self.config.sos_index,
            eos_index: self.config.eos_index,
            max_steps: DecodingConfig::greedy()
                .max_steps
                .min(self.textual.embedding.max_caption_length()),
            ..DecodingConfig::greedy()
        };
        let captions = self.decode(images, &decoding)?;
        Ok(Some(captions.trimmed(self.config.eos_index)))
    }
}

/// One sample image.
#[derive(Debug, Clone, PartialEq)]
struct SampleImage {
    image_id: ImageId,
    /// The file as recorded: the path the dataset reads it from.
    file: String,
    /// The file itself, for its thumbnail.
    source: PathBuf,
}

/// The sample images of a run: the first `train.sample_captions` images of the validation
/// split in its deterministic order, transformed once as validation transforms them.
#[derive(Debug, Clone)]
pub struct SampleImages {
    images: Vec<SampleImage>,
    /// `[N, 3, H, W]` pixel values, row-major.
    pixels: Vec<f32>,
    shape: [usize; 4],
}

impl SampleImages {
    /// The first `count` images of `loader`'s first epoch (all of them when the split is
    /// smaller); `None` when `count` is 0.
    pub fn from_loader(loader: &DataLoader, count: usize) -> Result<Option<Self>, TrainError> {
        if count == 0 {
            return Ok(None);
        }
        let dataset = loader.dataset();
        let order = loader.epoch_order(0);
        let seed = loader.config().seed;
        let mut images = Vec::new();
        let mut pixels = Vec::new();
        let mut size = (0, 0);
        for &index in order.iter().take(count) {
            let sample = dataset.get(index, seed, 0)?;
            let Some(entry) = dataset.coco().get(index) else {
                continue;
            };
            size = (sample.image.height as usize, sample.image.width as usize);
            pixels.extend_from_slice(&sample.image.data);
            images.push(SampleImage {
                image_id: sample.image_id,
                file: entry.path.to_string_lossy().into_owned(),
                source: entry.path.clone(),
            });
        }
        if images.is_empty() {
            return Ok(None);
        }
        let shape = [images.len(), 3, size.0, size.1];
        Ok(Some(Self {
            images,
            pixels,
            shape,
        }))
    }

    /// Number of sample images.
    pub fn len(&self) -> usize {
        self.images.len()
    }

    /// Whether there are none (never true for a set [`SampleImages::from_loader`] returns).
    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }

    /// Captions every sample image with `model` (in evaluation mode: no dropout) and decodes
    /// them with `tokenizer`: the record of validation `iteration`, or `None` when the model
    /// cannot caption.
    pub fn caption<B: Backend, M: SampleCaptioner<B>>(
        &self,
        model: &M,
        tokenizer: &virtex_data::SentencePieceBpeTokenizer,
        iteration: u64,
        device: &B::Device,
    ) -> Result<Option<SamplesRecord>, TrainError> {
        let images =
            Tensor::<B, 4>::from_data(TensorData::new(self.pixels.clone(), self.shape), device);
        let Some(tokens) = model.sample_captions(images)? else {
            return Ok(None);
        };
        let samples = self
            .images
            .iter()
            .zip(tokens)
            .map(|(image, tokens)| {
                Ok(SampleCaption {
                    image_id: image.image_id.clone(),
                    file: image.file.clone(),
                    caption: tokenizer.decode(&tokens)?,
                })
            })
            .collect::<Result<Vec<_>, TrainError>>()?;
        Ok(Some(SamplesRecord::new(iteration, samples)))
    }

    /// Writes a JPEG thumbnail of each sample image into `run_dir/samples/` unless it is
    /// already there (a resumed run reuses them), so the page does not point into the dataset.
    pub fn write_thumbnails(&self, run_dir: &Path) -> Result<(), TrainError> {
        let dir = run_dir.join(THUMBNAIL_DIR);
        std::fs::create_dir_all(&dir).map_err(|source| TrainError::Io {
            path: dir.clone(),
            source,
        })?;
        for image in &self.images {
            let path = run_dir.join(thumbnail_path(&image.image_id));
            if path.is_file() {
                continue;
            }
            let rgb = virtex_data::load_image(&image.source)?;
            let (width, height) = rgb.dimensions();
            let scale = f64::from(THUMBNAIL_SIDE) / f64::from(width.max(height));
            let thumbnail = if scale < 1.0 {
                image::imageops::thumbnail(
                    &rgb,
                    ((f64::from(width) * scale).round() as u32).max(1),
                    ((f64::from(height) * scale).round() as u32).max(1),
                )
            } else {
                rgb
            };
            let mut bytes = Vec::new();
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 85)
                .encode_image(&thumbnail)
                .map_err(|err| TrainError::Io {
                    path: path.clone(),
                    source: std::io::Error::other(err),
                })?;
            write_file_atomically(&path, &bytes)?;
        }
        Ok(())
    }
}

/// Where an image's thumbnail lives, relative to the run directory: `samples/<image id>.jpg`,
/// with anything but `[A-Za-z0-9._-]` in a file-stem id replaced.
pub fn thumbnail_path(image_id: &ImageId) -> String {
    let stem: String = image_id
        .to_string()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{THUMBNAIL_DIR}/{stem}.jpg")
}

/// Escapes text for HTML content and attribute values (`& < > " '`).
fn escape(text: &str) -> String {
    html_escape::encode_quoted_attribute(text).into_owned()
}

/// The page of `records`, newest validation first: per validation, each sample image with its
/// caption.
pub fn samples_page(records: &[SamplesRecord]) -> String {
    let mut html = String::from(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <title>VirTex sample captions</title>\n<style>\n\
         body { font-family: sans-serif; margin: 1.5em; }\n\
         .row { display: flex; flex-wrap: wrap; gap: 12px; }\n\
         figure { margin: 0; width: 200px; }\n\
         figure img { max-width: 192px; max-height: 192px; display: block; }\n\
         figcaption { font-size: 0.9em; margin-top: 4px; }\n\
         .file { color: #777; font-size: 0.8em; }\n\
         </style>\n</head>\n<body>\n<h1>Sample captions</h1>\n\
         <p>Greedy captions of the first validation images at each validation, newest \
         first (also in <code>metrics.jsonl</code>, <code>\"kind\":\"samples\"</code>).</p>\n",
    );
    for record in records.iter().rev() {
        html.push_str(&format!(
            "<h2 id=\"iteration-{0}\">Iteration {0}</h2>\n<div class=\"row\">\n",
            record.iteration
        ));
        for sample in &record.samples {
            // The file name alone on the page; the whole path on hover.
            let name = Path::new(&sample.file)
                .file_name()
                .map_or_else(|| sample.file.clone(), |name| name.to_string_lossy().into());
            let id = escape(&sample.image_id.to_string());
            html.push_str(&format!(
                "<figure><img src=\"{}\" alt=\"image {id}\"><figcaption>{}<br>\
                 <span class=\"file\" title=\"{}\">{} (id {id})</span></figcaption></figure>\n",
                escape(&thumbnail_path(&sample.image_id)),
                escape(&sample.caption),
                escape(&sample.file),
                escape(&name),
            ));
        }
        html.push_str("</div>\n");
    }
    html.push_str("</body>\n</html>\n");
    html
}

/// Rewrites `run_dir/samples.html` from the `samples` records of `metrics.jsonl` (so a resumed
/// run's page holds exactly the validations its log holds).
pub fn write_samples_page(run_dir: &Path) -> Result<(), TrainError> {
    let records = MetricsLog::read_samples(run_dir)?;
    write_file_atomically(
        &run_dir.join(SAMPLES_PAGE),
        samples_page(&records).as_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_escapes_captions_and_puts_the_newest_first() {
        let sample = |caption: &str| SampleCaption {
            image_id: ImageId::Name("a b/c".into()),
            file: "val2017/a b.jpg".into(),
            caption: caption.into(),
        };
        let page = samples_page(&[
            SamplesRecord::new(10, vec![sample("old")]),
            SamplesRecord::new(20, vec![sample("<script>&\"")]),
        ]);
        assert!(page.find("Iteration 20").unwrap() < page.find("Iteration 10").unwrap());
        assert!(page.contains("&lt;script&gt;&amp;&quot;"), "{page}");
        assert!(!page.contains("<script>"));
        assert!(page.contains("src=\"samples/a_b_c.jpg\""), "{page}");
    }
}
