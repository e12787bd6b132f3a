//! `virtex caption --attention DIR [--html]`: where the textual head looked for each word, drawn
//! over the image the model saw (the paper's Figure 5).
//!
//! Per image, one PNG strip: the centre crop, then one tile per word with the layer-averaged
//! cross-attention map (upsampled from the backbone's grid, e.g. 7×7, with a triangle filter =
//! bilinear) blended over the crop and the word written under it. With `--html`, also one PNG
//! per word and an `index.html` gallery (image, caption, per-word maps).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use ab_glyph::{point, Font, FontRef, PxScale, ScaleFont};
use image::imageops::{resize, FilterType};
use image::{ImageBuffer, Luma, Rgb, RgbImage};
use virtex_data::{Normalize, TransformedImage};
use virtex_device::write_atomically;

use crate::error::CliError;

/// The font the words are written in (see `assets/README.md` for its licence).
const FONT: &[u8] = include_bytes!("../assets/DejaVuSansMono.ttf");
/// Height of the band under each tile that holds its word.
const LABEL_HEIGHT: u32 = 22;
/// Tiles per row of a strip (the crop counts as one).
const TILES_PER_ROW: usize = 6;
/// Weight of the heat map in the blend (the image keeps the rest).
const HEAT_OPACITY: f32 = 0.55;

/// One captioned image and the maps of its words.
#[derive(Debug)]
pub(crate) struct AttentionFigure {
    /// The image file, for the gallery.
    pub source: PathBuf,
    /// The centre crop the model saw, back in 8-bit RGB.
    pub crop: RgbImage,
    /// The whole caption.
    pub caption: String,
    /// Each generated word (token) with its layer-averaged map, `grid.0 × grid.1` weights.
    pub words: Vec<(String, Vec<f32>)>,
    /// The backbone's grid, `(height, width)`.
    pub grid: (usize, usize),
}

/// The model's input (`[3, H, W]`, normalised with `normalize`: the ImageNet statistics of
/// [`virtex_data::ImageTransforms::downstream_val`]) as the 8-bit crop it came from.
pub(crate) fn denormalize(image: &TransformedImage, normalize: &Normalize) -> RgbImage {
    let (width, height) = (image.width, image.height);
    let plane = (width * height) as usize;
    RgbImage::from_fn(width, height, |x, y| {
        let at = (y * width + x) as usize;
        Rgb(std::array::from_fn(|c| {
            let value = image.data[c * plane + at] * normalize.std[c] + normalize.mean[c];
            (value * 255.0).round().clamp(0.0, 255.0) as u8
        }))
    })
}

/// `map` (`grid` row-major) scaled to `[0, 1]` (min to max), upsampled to the crop, coloured
/// and blended over `crop`.
pub(crate) fn overlay(crop: &RgbImage, map: &[f32], grid: (usize, usize)) -> RgbImage {
    let (grid_height, grid_width) = grid;
    // Min–max scaling, as matplotlib's `imshow` does for the paper's figures: the least
    // attended cell is blue and the most attended red whatever the map's spread.
    let low = map.iter().copied().fold(f32::INFINITY, f32::min);
    let high = map.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let scale = if high > low { 1.0 / (high - low) } else { 0.0 };
    let small: ImageBuffer<Luma<f32>, Vec<f32>> =
        ImageBuffer::from_fn(grid_width as u32, grid_height as u32, |x, y| {
            Luma([(map[y as usize * grid_width + x as usize] - low) * scale])
        });
    let heat = resize(&small, crop.width(), crop.height(), FilterType::Triangle);
    RgbImage::from_fn(crop.width(), crop.height(), |x, y| {
        let colour = heat_colour(heat.get_pixel(x, y)[0]);
        let pixel = crop.get_pixel(x, y);
        Rgb(std::array::from_fn(|c| {
            let blended = (1.0 - HEAT_OPACITY) * pixel[c] as f32 + HEAT_OPACITY * colour[c] as f32;
            blended.round().clamp(0.0, 255.0) as u8
        }))
    })
}

/// The "jet" colour map: dark blue (0) → blue → cyan → yellow → red → dark red (1).
fn heat_colour(value: f32) -> [u8; 3] {
    const STOPS: [[f32; 3]; 6] = [
        [0.0, 0.0, 0.5],
        [0.0, 0.0, 1.0],
        [0.0, 1.0, 1.0],
        [1.0, 1.0, 0.0],
        [1.0, 0.0, 0.0],
        [0.5, 0.0, 0.0],
    ];
    let position = value.clamp(0.0, 1.0) * (STOPS.len() - 1) as f32;
    let low = (position.floor() as usize).min(STOPS.len() - 2);
    let fraction = position - low as f32;
    std::array::from_fn(|c| {
        let channel = STOPS[low][c] * (1.0 - fraction) + STOPS[low + 1][c] * fraction;
        (channel * 255.0).round() as u8
    })
}

/// A tile with `label` written in the white band under `picture`.
fn labelled(picture: &RgbImage, label: &str, font: &FontRef<'_>) -> RgbImage {
    let mut tile = RgbImage::from_pixel(
        picture.width(),
        picture.height() + LABEL_HEIGHT,
        Rgb([255, 255, 255]),
    );
    image::imageops::replace(&mut tile, picture, 0, 0);
    draw_text(&mut tile, label, 4.0, picture.height() as f32 + 3.0, font);
    tile
}

/// Writes `text` in black from `(x, top)`, clipped to the image.
fn draw_text(image: &mut RgbImage, text: &str, x: f32, top: f32, font: &FontRef<'_>) {
    let scaled = font.as_scaled(PxScale::from(LABEL_HEIGHT as f32 - 6.0));
    let mut caret = x;
    for character in text.chars() {
        let mut glyph = scaled.scaled_glyph(character);
        glyph.position = point(caret, top + scaled.ascent());
        caret += scaled.h_advance(glyph.id);
        let Some(outline) = font.outline_glyph(glyph) else {
            continue;
        };
        let bounds = outline.px_bounds();
        outline.draw(|gx, gy, coverage| {
            let px = bounds.min.x as i64 + gx as i64;
            let py = bounds.min.y as i64 + gy as i64;
            if px < 0 || py < 0 || px >= image.width() as i64 || py >= image.height() as i64 {
                return;
            }
            let pixel = image.get_pixel_mut(px as u32, py as u32);
            for channel in pixel.0.iter_mut() {
                *channel = (*channel as f32 * (1.0 - coverage)).round() as u8;
            }
        });
    }
}

/// The bundled font (it is part of the binary, so parsing it cannot fail on user input).
fn font() -> FontRef<'static> {
    FontRef::try_from_slice(FONT).expect("the bundled DejaVu Sans Mono parses")
}

/// The strip of one figure: the crop, then each word's map, `TILES_PER_ROW` tiles a row.
pub(crate) fn render_strip(figure: &AttentionFigure) -> RgbImage {
    let font = font();
    let mut tiles = vec![labelled(&figure.crop, "(input)", &font)];
    for (word, map) in &figure.words {
        tiles.push(labelled(
            &overlay(&figure.crop, map, figure.grid),
            word,
            &font,
        ));
    }
    let (tile_width, tile_height) = (tiles[0].width(), tiles[0].height());
    let columns = tiles.len().min(TILES_PER_ROW) as u32;
    let rows = tiles.len().div_ceil(TILES_PER_ROW) as u32;
    let mut strip = RgbImage::from_pixel(
        columns * tile_width,
        rows * tile_height,
        Rgb([255, 255, 255]),
    );
    for (index, tile) in tiles.iter().enumerate() {
        let (column, row) = (index % TILES_PER_ROW, index / TILES_PER_ROW);
        image::imageops::replace(
            &mut strip,
            tile,
            column as i64 * tile_width as i64,
            row as i64 * tile_height as i64,
        );
    }
    strip
}

/// A file-name-safe form of `text` (ASCII letters, digits, `-` and `_`; the rest become `_`).
fn file_safe(text: &str) -> String {
    let safe: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if safe.is_empty() {
        "_".into()
    } else {
        safe
    }
}

/// `text` escaped for HTML text and attribute values (`& < > " '`).
fn html_escape(text: &str) -> String {
    html_escape::encode_quoted_attribute(text).into_owned()
}

/// A relative link from path segments (names from [`file_safe`], URL-safe as they are).
fn link(parts: &[&str]) -> String {
    parts.join("/")
}

fn save_png(image: &RgbImage, path: &Path) -> Result<(), CliError> {
    write_atomically(path, |temporary| {
        image
            .save_with_format(temporary, image::ImageFormat::Png)
            .map_err(std::io::Error::other)
    })
    .map_err(|err| CliError::Output {
        path: path.to_path_buf(),
        message: err.to_string(),
    })
}

/// Writes the figures of one batch into `directory`: `NNNN_<stem>.png` (the strip) and, with
/// `html`, `NNNN_<stem>/crop.png` and `NNNN_<stem>/MM_<word>.png`. `first` numbers the images
/// across batches. Returns the gallery entries for [`write_gallery`].
pub(crate) fn write_figures(
    directory: &Path,
    figures: &[AttentionFigure],
    first: usize,
    html: bool,
) -> Result<Vec<GalleryEntry>, CliError> {
    let create = |path: &Path| {
        std::fs::create_dir_all(path).map_err(|err| CliError::Output {
            path: path.to_path_buf(),
            message: format!("cannot create the directory: {err}"),
        })
    };
    create(directory)?;
    let mut entries = Vec::with_capacity(figures.len());
    for (offset, figure) in figures.iter().enumerate() {
        let stem = figure
            .source
            .file_stem()
            .map(|stem| stem.to_string_lossy().into_owned())
            .unwrap_or_default();
        let name = format!("{:04}_{}", first + offset, file_safe(&stem));
        let strip = format!("{name}.png");
        save_png(&render_strip(figure), &directory.join(&strip))?;
        let mut words = Vec::new();
        let mut crop = None;
        if html {
            create(&directory.join(&name))?;
            let crop_file = "crop.png";
            save_png(&figure.crop, &directory.join(&name).join(crop_file))?;
            crop = Some(link(&[&name, crop_file]));
            for (index, (word, map)) in figure.words.iter().enumerate() {
                let file = format!("{index:02}_{}.png", file_safe(word));
                save_png(
                    &overlay(&figure.crop, map, figure.grid),
                    &directory.join(&name).join(&file),
                )?;
                words.push((word.clone(), link(&[&name, &file])));
            }
        }
        entries.push(GalleryEntry {
            source: figure.source.clone(),
            caption: figure.caption.clone(),
            strip,
            crop,
            words,
        });
    }
    Ok(entries)
}

/// One image of the gallery; links are relative to the output directory.
#[derive(Debug)]
pub(crate) struct GalleryEntry {
    source: PathBuf,
    caption: String,
    strip: String,
    crop: Option<String>,
    words: Vec<(String, String)>,
}

/// Writes `directory/index.html`: per image its crop, caption, and each word's map.
pub(crate) fn write_gallery(directory: &Path, entries: &[GalleryEntry]) -> Result<(), CliError> {
    let mut page = String::from(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>VirTex attention maps</title>\n\
         <style>body{font-family:sans-serif;margin:1.5em}figure{display:inline-block;margin:4px;\
         text-align:center}figcaption{font-family:monospace}section{margin-bottom:2em}\
         img{image-rendering:auto}</style></head><body>\n<h1>Where the captioner looked</h1>\n\
         <p>Cross-attention of the textual head over the visual grid for each generated word, \
         averaged over heads and layers, upsampled, from its least (blue) to its most \
         attended cell (red).</p>\n",
    );
    for entry in entries {
        let _ = write!(
            page,
            "<section><h2>{}</h2>\n<p class=\"caption\">{}</p>\n",
            html_escape(&entry.source.display().to_string()),
            html_escape(&entry.caption)
        );
        if let Some(crop) = &entry.crop {
            let _ = writeln!(
                page,
                "<figure><img src=\"{}\" alt=\"input\"><figcaption>(input)</figcaption></figure>",
                html_escape(crop)
            );
        }
        for (word, file) in &entry.words {
            let _ = writeln!(
                page,
                "<figure><img src=\"{}\" alt=\"{word}\"><figcaption>{word}</figcaption></figure>",
                html_escape(file),
                word = html_escape(word)
            );
        }
        let _ = writeln!(
            page,
            "<p><a href=\"{}\">all maps in one image</a></p></section>",
            html_escape(&entry.strip)
        );
    }
    page.push_str("</body></html>\n");
    let path = directory.join("index.html");
    write_atomically(&path, |temporary| std::fs::write(temporary, &page)).map_err(|err| {
        CliError::Output {
            path: path.clone(),
            message: err.to_string(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hottest_grid_cell_is_reddest_and_the_coldest_bluest() {
        let crop = RgbImage::from_pixel(70, 70, Rgb([128, 128, 128]));
        let mut map = vec![0.0f32; 49];
        map[0] = 1.0; // top-left cell
        let blended = overlay(&crop, &map, (7, 7));
        let hot = blended.get_pixel(2, 2);
        let cold = blended.get_pixel(67, 67);
        // Jet ends in dark red (1) and dark blue (0), blended 55 % over mid grey.
        assert!(hot[0] > hot[2] + 50 && hot[1] < 80, "{hot:?}");
        assert!(cold[2] > cold[0] + 50 && cold[1] < 80, "{cold:?}");
    }

    #[test]
    fn a_non_square_grid_keeps_rows_and_columns() {
        let crop = RgbImage::from_pixel(40, 30, Rgb([0, 0, 0]));
        // 3 rows × 4 columns; the hot cell is row 2, column 3 (bottom right).
        let mut map = vec![0.0f32; 12];
        map[2 * 4 + 3] = 1.0;
        let blended = overlay(&crop, &map, (3, 4));
        assert!(blended.get_pixel(38, 28)[0] > blended.get_pixel(1, 1)[0]);
    }

    #[test]
    fn strips_hold_every_word_and_labels_are_drawn() {
        let figure = AttentionFigure {
            source: PathBuf::from("a.jpg"),
            crop: RgbImage::from_pixel(32, 32, Rgb([200, 200, 200])),
            caption: "a b c d e f g".into(),
            words: (0..7)
                .map(|i| (format!("w{i}"), vec![1.0 / 4.0; 4]))
                .collect(),
            grid: (2, 2),
        };
        let strip = render_strip(&figure);
        // 8 tiles: 6 in the first row, 2 in the second.
        assert_eq!(strip.dimensions(), (6 * 32, 2 * (32 + LABEL_HEIGHT)));
        let band =
            (0..32).any(|x| (32..32 + LABEL_HEIGHT).any(|y| strip.get_pixel(32 + x, y)[0] < 128));
        assert!(band, "the word under the first map is written");
    }

    #[test]
    fn names_and_html_are_escaped() {
        assert_eq!(file_safe("a/b c"), "a_b_c");
        assert_eq!(file_safe(""), "_");
        assert_eq!(
            html_escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#x27;"
        );
    }

    #[test]
    fn denormalize_inverts_the_normalisation() {
        let pixel = [10u8, 128, 250];
        let normalize = Normalize::default();
        let data: Vec<f32> = (0..3)
            .map(|c| (pixel[c] as f32 / 255.0 - normalize.mean[c]) / normalize.std[c])
            .collect();
        let image = TransformedImage {
            data,
            height: 1,
            width: 1,
        };
        assert_eq!(denormalize(&image, &normalize).get_pixel(0, 0).0, pixel);
    }
}
