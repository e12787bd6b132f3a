//! Batching samples into tensors (upstream `CaptioningDataset.collate_fn`).

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use crate::coco::{ImageId, SkippedImage};
use crate::dataset::CaptioningSample;
use crate::error::{DataError, Result};
use crate::instances::CocoInstances;
use crate::transforms::TransformedImage;

/// A batch on the host, ready to move to any device with [`CollatedBatch::to_device`].
#[derive(Debug, Clone, PartialEq)]
pub struct CollatedBatch {
    /// Image ids, in batch order.
    pub image_ids: Vec<ImageId>,
    /// Images, `[B, 3, H, W]` row-major.
    pub images: Vec<f32>,
    /// `(H, W)` of every image.
    pub image_size: (usize, usize),
    /// Caption tokens `[B, T]` row-major, right-padded with 0; `T` is the longest in the batch.
    pub caption_tokens: Vec<i64>,
    /// Reversed caption tokens `[B, T]`, right-padded with 0.
    pub noitpac_tokens: Vec<i64>,
    /// Token count of each caption (`[SOS]`/`[EOS]` included), `[B]`.
    pub caption_lengths: Vec<i64>,
    /// `T`.
    pub max_length: usize,
    /// The caption text each sample used (after normalisation and any flip swap).
    pub captions: Vec<String>,
    /// Images left out of this batch because they could not be read (`skip_bad_images`).
    pub skipped: Vec<SkippedImage>,
}

/// A batch on a device: what the VirTex model and loss consume.
#[derive(Debug, Clone)]
pub struct Batch<B: Backend> {
    /// Image ids, in batch order.
    pub image_ids: Vec<ImageId>,
    /// `[B, 3, H, W]` normalised images.
    pub images: Tensor<B, 4>,
    /// `[B, T]` `[SOS] … [EOS]` tokens, right-padded with 0.
    pub caption_tokens: Tensor<B, 2, Int>,
    /// `[B, T]` reversed tokens (`[EOS] … [SOS]`), right-padded with 0.
    pub noitpac_tokens: Tensor<B, 2, Int>,
    /// `[B]` caption lengths.
    pub caption_lengths: Tensor<B, 1, Int>,
    /// `[B, K]` COCO object labels (`1..=80`, right-padded with the background id 0), for the
    /// multilabel-classification pretext; `None` unless the batch was moved with
    /// [`CollatedBatch::to_device_labelled`] and a label table.
    pub object_labels: Option<Tensor<B, 2, Int>>,
}

impl CollatedBatch {
    /// Number of samples.
    pub fn batch_size(&self) -> usize {
        self.image_ids.len()
    }

    /// Copies the batch to `device`.
    pub fn to_device<B: Backend>(&self, device: &B::Device) -> Batch<B> {
        let b = self.batch_size();
        let (h, w) = self.image_size;
        let t = self.max_length;
        Batch {
            image_ids: self.image_ids.clone(),
            images: Tensor::from_data(TensorData::new(self.images.clone(), [b, 3, h, w]), device),
            caption_tokens: Tensor::from_data(
                TensorData::new(self.caption_tokens.clone(), [b, t]),
                device,
            ),
            noitpac_tokens: Tensor::from_data(
                TensorData::new(self.noitpac_tokens.clone(), [b, t]),
                device,
            ),
            caption_lengths: Tensor::from_data(
                TensorData::new(self.caption_lengths.clone(), [b]),
                device,
            ),
            object_labels: None,
        }
    }

    /// [`CollatedBatch::to_device`], with each image's object labels from `labels` (when given)
    /// in [`Batch::object_labels`] ([`CocoInstances::padded_labels`]). The labels are looked up
    /// by image id here rather than carried by the collated batch, so that a batch split into
    /// shards (data parallel) keeps its labels with its ids.
    pub fn to_device_labelled<B: Backend>(
        &self,
        device: &B::Device,
        labels: Option<&CocoInstances>,
    ) -> Batch<B> {
        let mut batch = self.to_device(device);
        if let Some(labels) = labels {
            let (matrix, width) = labels.padded_labels(&self.image_ids);
            batch.object_labels = Some(Tensor::from_data(
                TensorData::new(matrix, [self.batch_size(), width]),
                device,
            ));
        }
        batch
    }
}

fn stack_images(images: &[&TransformedImage]) -> Result<(Vec<f32>, (usize, usize))> {
    let first = images
        .first()
        .ok_or_else(|| DataError::config("batch", "no sample to collate"))?;
    let size = (first.height as usize, first.width as usize);
    let mut data = Vec::with_capacity(images.len() * first.data.len());
    for image in images {
        if (image.height as usize, image.width as usize) != size {
            return Err(DataError::config(
                "batch",
                format!(
                    "images of different sizes ({}x{} and {}x{}): end the transforms with a fixed-size crop",
                    size.0, size.1, image.height, image.width
                ),
            ));
        }
        data.extend_from_slice(&image.data);
    }
    Ok((data, size))
}

/// Stacks samples into a batch, padding the token sequences on the right with 0 (upstream's
/// `pad_sequence(padding_value=0)`, its `<unk>` id).
pub fn collate(
    samples: Vec<CaptioningSample>,
    skipped: Vec<SkippedImage>,
) -> Result<CollatedBatch> {
    collate_padded(samples, skipped, 0)
}

/// [`collate`], padding the token sequences on the right with `padding_index` (the id the
/// model's loss ignores; [`crate::CaptioningDataset::padding_index`]).
pub fn collate_padded(
    samples: Vec<CaptioningSample>,
    skipped: Vec<SkippedImage>,
    padding_index: u32,
) -> Result<CollatedBatch> {
    let (images, image_size) = stack_images(&samples.iter().map(|s| &s.image).collect::<Vec<_>>())?;
    let t = samples
        .iter()
        .map(|s| s.tokens.caption_tokens.len())
        .max()
        .unwrap_or(0);
    let b = samples.len();
    let mut caption_tokens = vec![i64::from(padding_index); b * t];
    let mut noitpac_tokens = vec![i64::from(padding_index); b * t];
    let mut caption_lengths = Vec::with_capacity(b);
    for (i, s) in samples.iter().enumerate() {
        for (j, &id) in s.tokens.caption_tokens.iter().enumerate() {
            caption_tokens[i * t + j] = i64::from(id);
        }
        for (j, &id) in s.tokens.noitpac_tokens.iter().enumerate() {
            noitpac_tokens[i * t + j] = i64::from(id);
        }
        caption_lengths.push(s.tokens.caption_tokens.len() as i64);
    }
    let mut image_ids = Vec::with_capacity(b);
    let mut captions = Vec::with_capacity(b);
    for s in samples {
        image_ids.push(s.image_id);
        captions.push(s.caption);
    }
    Ok(CollatedBatch {
        image_ids,
        images,
        image_size,
        caption_tokens,
        noitpac_tokens,
        caption_lengths,
        max_length: t,
        captions,
        skipped,
    })
}

/// A batch of images without captions (inference), on a device.
#[derive(Debug, Clone)]
pub struct ImageBatch<B: Backend> {
    /// Image ids, in batch order.
    pub image_ids: Vec<ImageId>,
    /// `[B, 3, H, W]` images.
    pub images: Tensor<B, 4>,
}

/// Stacks transformed images into `[B, 3, H, W]`.
pub fn collate_images<B: Backend>(
    images: Vec<(ImageId, TransformedImage)>,
    device: &B::Device,
) -> Result<ImageBatch<B>> {
    let (data, (h, w)) = stack_images(&images.iter().map(|(_, im)| im).collect::<Vec<_>>())?;
    let b = images.len();
    Ok(ImageBatch {
        image_ids: images.into_iter().map(|(id, _)| id).collect(),
        images: Tensor::from_data(TensorData::new(data, [b, 3, h, w]), device),
    })
}
