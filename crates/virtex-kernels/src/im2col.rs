//! Convolution as matrix products on plain `f32` slices in NCHW layout: im2col / col2im and
//! three GEMMs (forward, data gradient, weight gradient) on the `gemm` crate.
//!
//! Notation: input `x [N, C, H, W]`, weight `w [O, C, KH, KW]`, output `y [N, O, OH, OW]`,
//! `K = C·KH·KW` (one im2col row per input channel and kernel tap), `P = OH·OW`.
//!
//! Images are processed in chunks of `nb` images whose columns sit side by side
//! (`col [K, nb·P]`), so that the late ResNet stages (`P` = 49 or 16) still give the GEMM a wide
//! enough matrix; the early stages (`P` ≥ 1024) use one image per chunk and read and write the
//! NCHW tensors in place. A 1×1, stride-1, unpadded convolution needs no im2col at all.
//!
//! Threads: the GEMMs use `gemm`'s rayon parallelism (it stays serial below its own size
//! threshold), except a small weight gradient, whose batch is split across threads
//! ([`SPLIT_BATCH_MAX_OUTPUTS`]); im2col, col2im and the layout copies split their rows across
//! rayon's pool.

use burn::tensor::ops::ConvOptions;
use std::cell::RefCell;
use std::mem::MaybeUninit;
use std::ops::Range;

use rayon::prelude::*;

/// Below this many output columns per GEMM, neighbouring images are merged into one chunk.
const MIN_COLUMNS: usize = 1024;

/// Weight gradients of at most this many elements (`O·K`) split the batch across threads: each
/// thread multiplies its own images into a private `[O, K]` sum, and the sums are added.
/// `gemm` parallelises over the rows and columns of its output only, so a small `[O, K]` with
/// a long reduction (`N·P`: the stem's 64×147, layer 1's 64×64 and 64×576 at 56² or 32²) ran
/// on one core (a split-K GEMM, in effect).
const SPLIT_BATCH_MAX_OUTPUTS: usize = 64 * 1024;

/// The weight gradient's GEMM takes `dy` transposed (see [`weight_grad_of`]) when the output
/// has at most this many channels (and no more than `K`), and a chunk of images (of the batch,
/// or of one thread's share of it) reduces over at least [`TRANSPOSED_DY_MIN_COLUMNS`] columns.
/// Measured on ResNet-50's layers (`conv_bwd_weight` rows at 64²): 27–54 % faster there; with
/// 512 or more channels, or 128 columns, unpacked `dy` made gemm 1.4–13× slower.
const TRANSPOSED_DY_MAX_CHANNELS: usize = 256;

/// See [`TRANSPOSED_DY_MAX_CHANNELS`].
const TRANSPOSED_DY_MIN_COLUMNS: usize = 512;

/// The sizes of one 2-D convolution, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ConvGeometry {
    pub batch: usize,
    pub c_in: usize,
    pub height: usize,
    pub width: usize,
    pub c_out: usize,
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub padding: [usize; 2],
    pub dilation: [usize; 2],
    pub out_height: usize,
    pub out_width: usize,
}

impl ConvGeometry {
    /// The geometry of a convolution these kernels handle: one group, matching channels,
    /// positive strides and dilations and a non-empty output. `None` otherwise (the caller
    /// falls back to burn's kernel, which also reports invalid shapes).
    pub fn new(x: [usize; 4], w: [usize; 4], options: &ConvOptions<2>) -> Option<Self> {
        let [batch, c_in, height, width] = x;
        let [c_out, w_c_in, kh, kw] = w;
        if options.groups != 1
            || w_c_in != c_in
            || options.stride.contains(&0)
            || options.dilation.contains(&0)
            || [batch, c_in, height, width, c_out, kh, kw].contains(&0)
        {
            return None;
        }
        let out = |size: usize, k: usize, axis: usize| {
            let span = options.dilation[axis] * (k - 1) + 1;
            let padded = size + 2 * options.padding[axis];
            (padded >= span).then(|| (padded - span) / options.stride[axis] + 1)
        };
        Some(Self {
            batch,
            c_in,
            height,
            width,
            c_out,
            kernel: [kh, kw],
            stride: options.stride,
            padding: options.padding,
            dilation: options.dilation,
            out_height: out(height, kh, 0)?,
            out_width: out(width, kw, 1)?,
        })
    }

    /// Rows of the im2col matrix: `C·KH·KW`.
    pub fn k(&self) -> usize {
        self.c_in * self.kernel[0] * self.kernel[1]
    }

    /// Output positions per image: `OH·OW`.
    pub fn p(&self) -> usize {
        self.out_height * self.out_width
    }

    fn input_plane(&self) -> usize {
        self.height * self.width
    }

    /// A 1×1 stride-1 unpadded convolution: the input image is already its im2col matrix.
    fn pointwise(&self) -> bool {
        self.kernel == [1, 1] && self.stride == [1, 1] && self.padding == [0, 0]
    }

    /// Whether the weight gradient's GEMMs take `dy` transposed when they are handed `images`
    /// images in all (the whole batch, or one thread's share of it): the layout the largest of
    /// its GEMMs is measured faster in.
    ///
    /// Transposing `dy` costs `O·cols` copies where packing the im2col matrix cost `K·cols`
    /// gathers: with more outputs than inputs per tap group (`O > K`, ResNet's 1×1 64→256 at 56²)
    /// the transpose is the larger (1.5× slower there).
    fn weight_grad_transposes_dy(&self, images: usize) -> bool {
        self.c_out <= TRANSPOSED_DY_MAX_CHANNELS
            && self.c_out <= self.k()
            && self.chunk().min(images) * self.p() >= TRANSPOSED_DY_MIN_COLUMNS
    }

    /// Images per chunk.
    fn chunk(&self) -> usize {
        MIN_COLUMNS.div_ceil(self.p()).clamp(1, self.batch)
    }

    pub fn output_shape(&self) -> [usize; 4] {
        [self.batch, self.c_out, self.out_height, self.out_width]
    }

    /// For output row `oh` (or column) and kernel tap `k` along `axis`: the input coordinate of
    /// output 0 (may be negative) and the half-open range of outputs whose input lies inside.
    fn valid_range(&self, axis: usize, tap: usize) -> (isize, usize, usize) {
        let (size, out) = match axis {
            0 => (self.height, self.out_height),
            _ => (self.width, self.out_width),
        };
        let offset = (tap * self.dilation[axis]) as isize - self.padding[axis] as isize;
        let stride = self.stride[axis] as isize;
        // First output with offset + o·stride ≥ 0, first output with offset + o·stride ≥ size.
        let first = if offset >= 0 {
            0
        } else {
            (-offset + stride - 1) / stride
        };
        let end = (size as isize - offset + stride - 1)
            .div_euclid(stride)
            .max(0);
        let first = (first as usize).min(out);
        let end = (end as usize).clamp(first, out);
        (offset, first, end)
    }
}

/// `dst := [dst +] lhs · rhs` with explicit row/column strides (elements), on `parallelism`'s
/// threads.
///
/// # Safety
/// Every pointer must address the strided `m×k`, `k×n` and `m×n` matrices it describes, and
/// `dst` must not overlap the operands.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_f32(
    [m, n, k]: [usize; 3],
    dst: *mut f32,
    [dst_rs, dst_cs]: [isize; 2],
    accumulate: bool,
    lhs: *const f32,
    [lhs_rs, lhs_cs]: [isize; 2],
    rhs: *const f32,
    [rhs_rs, rhs_cs]: [isize; 2],
    parallelism: gemm::Parallelism,
) {
    // SAFETY: forwarded from the caller's contract.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            dst_cs,
            dst_rs,
            accumulate,
            lhs,
            lhs_cs,
            lhs_rs,
            rhs,
            rhs_cs,
            rhs_rs,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// Fills `col [K, nb·P]` for images `first..first + nb` of `x`.
fn im2col(g: &ConvGeometry, x: &[f32], first: usize, nb: usize, col: &mut [f32]) {
    let (p, plane) = (g.p(), g.input_plane());
    let taps = g.kernel[0] * g.kernel[1];
    col.par_chunks_mut(nb * p)
        .enumerate()
        .for_each(|(row, dst)| {
            let channel = row / taps;
            let (ki, kj) = ((row % taps) / g.kernel[1], row % g.kernel[1]);
            let (row_offset, oh_first, oh_end) = g.valid_range(0, ki);
            let (col_offset, ow_first, ow_end) = g.valid_range(1, kj);
            for image in 0..nb {
                let src = &x[((first + image) * g.c_in + channel) * plane..][..plane];
                let dst = &mut dst[image * p..][..p];
                for oh in 0..g.out_height {
                    let out_row = &mut dst[oh * g.out_width..][..g.out_width];
                    if oh < oh_first || oh >= oh_end {
                        out_row.fill(0.0);
                        continue;
                    }
                    let ih = (row_offset + (oh * g.stride[0]) as isize) as usize;
                    let in_row = &src[ih * g.width..][..g.width];
                    out_row[..ow_first].fill(0.0);
                    out_row[ow_end..].fill(0.0);
                    let iw0 = (col_offset + (ow_first * g.stride[1]) as isize) as usize;
                    if g.stride[1] == 1 {
                        out_row[ow_first..ow_end]
                            .copy_from_slice(&in_row[iw0..iw0 + (ow_end - ow_first)]);
                    } else {
                        for (value, iw) in out_row[ow_first..ow_end]
                            .iter_mut()
                            .zip((iw0..).step_by(g.stride[1]))
                        {
                            *value = in_row[iw];
                        }
                    }
                }
            }
        });
}

/// Writes images `first..first + nb` of `dx` (uninitialised): zeros, then every `dcol [K, nb·P]`
/// entry added at its input position. Each plane is zeroed right before it is accumulated
/// into, while it is in cache, instead of in a separate pass over the whole tensor.
fn col2im(g: &ConvGeometry, dcol: &[f32], first: usize, nb: usize, dx: &mut [MaybeUninit<f32>]) {
    let (p, plane) = (g.p(), g.input_plane());
    let taps = g.kernel[0] * g.kernel[1];
    let images = &mut dx[first * g.c_in * plane..(first + nb) * g.c_in * plane];
    images
        .par_chunks_mut(plane)
        .enumerate()
        .for_each(|(index, dst)| {
            let dst = zeroed(dst);
            let (image, channel) = (index / g.c_in, index % g.c_in);
            for tap in 0..taps {
                let (ki, kj) = (tap / g.kernel[1], tap % g.kernel[1]);
                let row = channel * taps + tap;
                let src = &dcol[row * nb * p + image * p..][..p];
                let (row_offset, oh_first, oh_end) = g.valid_range(0, ki);
                let (col_offset, ow_first, ow_end) = g.valid_range(1, kj);
                for oh in oh_first..oh_end {
                    let ih = (row_offset + (oh * g.stride[0]) as isize) as usize;
                    let in_row = &mut dst[ih * g.width..][..g.width];
                    let out_row = &src[oh * g.out_width..][..g.out_width];
                    let iw0 = (col_offset + (ow_first * g.stride[1]) as isize) as usize;
                    if g.stride[1] == 1 {
                        let span = ow_end - ow_first;
                        for (acc, value) in in_row[iw0..iw0 + span]
                            .iter_mut()
                            .zip(&out_row[ow_first..ow_end])
                        {
                            *acc += value;
                        }
                    } else {
                        for (value, iw) in out_row[ow_first..ow_end]
                            .iter()
                            .zip((iw0..).step_by(g.stride[1]))
                        {
                            in_row[iw] += value;
                        }
                    }
                }
            }
        });
}

/// Initialises `buffer` with zeros and returns it as floats.
fn zeroed(buffer: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    for value in buffer.iter_mut() {
        value.write(0.0);
    }
    // SAFETY: every element was just initialised; MaybeUninit<f32> has f32's layout.
    unsafe { &mut *(buffer as *mut [MaybeUninit<f32>] as *mut [f32]) }
}

/// Copies images `first..first + nb` of a `[N, R, P]` tensor into `[R, nb·P]`.
fn gather(src: &[f32], rows: usize, p: usize, first: usize, nb: usize, dst: &mut [f32]) {
    dst.par_chunks_mut(nb * p)
        .enumerate()
        .for_each(|(row, out)| {
            for image in 0..nb {
                out[image * p..][..p]
                    .copy_from_slice(&src[((first + image) * rows + row) * p..][..p]);
            }
        });
}

/// Writes `[R, nb·P]` into images `first..first + nb` of a `[N, R, P]` tensor.
fn scatter(
    src: &[f32],
    rows: usize,
    p: usize,
    first: usize,
    nb: usize,
    dst: &mut [MaybeUninit<f32>],
) {
    let images = &mut dst[first * rows * p..(first + nb) * rows * p];
    images
        .par_chunks_mut(p)
        .enumerate()
        .for_each(|(index, out)| {
            let (image, row) = (index / rows, index % rows);
            for (o, &v) in out.iter_mut().zip(&src[row * nb * p + image * p..][..p]) {
                o.write(v);
            }
        });
}

/// Chunks of images: `(first, nb)`.
fn chunks(g: &ConvGeometry) -> impl Iterator<Item = (usize, usize)> {
    chunks_in(g, 0..g.batch)
}

/// Chunks of images `images`: `(first, nb)`.
fn chunks_in(g: &ConvGeometry, images: Range<usize>) -> impl Iterator<Item = (usize, usize)> {
    let step = g.chunk();
    let end = images.end;
    images
        .step_by(step)
        .map(move |first| (first, step.min(end - first)))
}

/// A result buffer of `len` floats that the kernel initialises completely.
struct Output(Vec<f32>);

impl Output {
    fn new(len: usize) -> Self {
        Self(Vec::with_capacity(len))
    }

    fn uninit(&mut self) -> &mut [MaybeUninit<f32>] {
        let len = self.0.capacity();
        &mut self.0.spare_capacity_mut()[..len]
    }

    /// `offset` elements in, as a GEMM destination.
    fn ptr(&mut self, offset: usize) -> *mut f32 {
        self.uninit()[offset..].as_mut_ptr().cast()
    }

    /// # Safety
    /// Every element must have been written.
    unsafe fn finish(mut self) -> Vec<f32> {
        let len = self.0.capacity();
        // SAFETY: the caller guarantees the first `len` elements are initialised.
        unsafe { self.0.set_len(len) };
        self.0
    }
}

thread_local! {
    /// Reused im2col / layout buffers: a convolution of ResNet-50 needs up to a few MB, and
    /// fresh allocations of that size cost page faults and zeroing on every call.
    static SCRATCH: RefCell<[Vec<f32>; 2]> = const { RefCell::new([Vec::new(), Vec::new()]) };
}

/// Runs `f` with two scratch buffers of at least `a` and `b` floats (contents unspecified but
/// initialised). Falls back to fresh buffers when the thread's are in use (a re-entrant call
/// from a rayon task that this thread picked up while waiting).
fn with_scratch<R>(a: usize, b: usize, f: impl FnOnce(&mut [f32], &mut [f32]) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buffers) => {
            let [first, second] = &mut *buffers;
            for (buffer, len) in [(&mut *first, a), (&mut *second, b)] {
                if buffer.len() < len {
                    buffer.resize(len, 0.0);
                }
            }
            f(&mut first[..a], &mut second[..b])
        }
        Err(_) => f(&mut vec![0.0; a], &mut vec![0.0; b]),
    })
}

/// `y = conv(x, w)` without bias. `x`, `w` contiguous NCHW / OIHW; returns `y` contiguous.
pub(crate) fn conv2d_forward(g: &ConvGeometry, x: &[f32], w: &[f32]) -> Vec<f32> {
    let (k, p, o) = (g.k(), g.p(), g.c_out);
    let mut y = Output::new(g.batch * o * p);
    let nb_max = g.chunk();
    let col_len = if g.pointwise() && nb_max == 1 {
        0
    } else {
        k * nb_max * p
    };
    let out_len = if nb_max == 1 { 0 } else { o * nb_max * p };
    with_scratch(col_len, out_len, |col, out| {
        for (first, nb) in chunks(g) {
            let cols = nb * p;
            let rhs: &[f32] = if g.pointwise() && nb == 1 {
                &x[first * g.c_in * p..][..g.c_in * p]
            } else {
                let col = &mut col[..k * cols];
                if g.pointwise() {
                    gather(x, g.c_in, p, first, nb, col);
                } else {
                    im2col(g, x, first, nb, col);
                }
                col
            };
            let direct = nb == 1;
            let dst = if direct {
                y.ptr(first * o * p)
            } else {
                out.as_mut_ptr()
            };
            // SAFETY: w is [O, K], rhs is [K, cols], dst is [O, cols] (a distinct buffer that
            // the product overwrites without reading).
            unsafe {
                gemm_f32(
                    [o, cols, k],
                    dst,
                    [cols as isize, 1],
                    false,
                    w.as_ptr(),
                    [k as isize, 1],
                    rhs.as_ptr(),
                    [cols as isize, 1],
                    gemm::Parallelism::Rayon(0),
                );
            }
            if !direct {
                scatter(&out[..o * cols], o, p, first, nb, y.uninit());
            }
        }
    });
    // SAFETY: the chunks cover every image, and each chunk's outputs were written by the GEMM
    // or by `scatter`.
    unsafe { y.finish() }
}

/// `dx = ∂L/∂x` from `dy = ∂L/∂y` and `w`. Returns `dx [N, C, H, W]`.
pub(crate) fn conv2d_data_grad(g: &ConvGeometry, w: &[f32], dy: &[f32]) -> Vec<f32> {
    let (k, p, o) = (g.k(), g.p(), g.c_out);
    let plane = g.input_plane();
    let mut dx = Output::new(g.batch * g.c_in * plane);
    let nb_max = g.chunk();
    let dy_len = if nb_max == 1 { 0 } else { o * nb_max * p };
    let direct_ok = g.pointwise() && nb_max == 1;
    let dcol_len = if direct_ok { 0 } else { k * nb_max * p };
    with_scratch(dy_len, dcol_len, |dy_chunk, dcol| {
        for (first, nb) in chunks(g) {
            let cols = nb * p;
            let lhs_dy: &[f32] = if nb == 1 {
                &dy[first * o * p..][..o * p]
            } else {
                let dy_chunk = &mut dy_chunk[..o * cols];
                gather(dy, o, p, first, nb, dy_chunk);
                dy_chunk
            };
            let direct = g.pointwise() && nb == 1;
            let dst = if direct {
                dx.ptr(first * g.c_in * plane)
            } else {
                dcol.as_mut_ptr()
            };
            // SAFETY: wᵀ is [K, O] (element (r, o) at o·K + r), dy chunk is [O, cols], dst is
            // [K, cols], overwritten without being read.
            unsafe {
                gemm_f32(
                    [k, cols, o],
                    dst,
                    [cols as isize, 1],
                    false,
                    w.as_ptr(),
                    [1, k as isize],
                    lhs_dy.as_ptr(),
                    [cols as isize, 1],
                    gemm::Parallelism::Rayon(0),
                );
            }
            if direct {
                continue;
            }
            if g.pointwise() {
                scatter(&dcol[..k * cols], g.c_in, p, first, nb, dx.uninit());
            } else {
                col2im(g, &dcol[..k * cols], first, nb, dx.uninit());
            }
        }
    });
    // SAFETY: every image was written by the GEMM, `scatter` or `col2im`.
    unsafe { dx.finish() }
}

/// `dw = ∂L/∂w` from `x` and `dy`. Returns `dw [O, C, KH, KW]`.
pub(crate) fn conv2d_weight_grad(g: &ConvGeometry, x: &[f32], dy: &[f32]) -> Vec<f32> {
    let (k, o) = (g.k(), g.c_out);
    let groups = rayon::current_num_threads().min(g.batch);
    // `weight_grad_of`'s result, `[O, K]` or its transpose.
    let in_order = |dw: Vec<f32>, transpose_dy: bool| {
        if transpose_dy {
            transposed(&dw, k, o)
        } else {
            dw
        }
    };
    if groups < 2 || o * k > SPLIT_BATCH_MAX_OUTPUTS {
        let transpose_dy = g.weight_grad_transposes_dy(g.batch);
        let dw = weight_grad_of(
            g,
            x,
            dy,
            0..g.batch,
            transpose_dy,
            gemm::Parallelism::Rayon(0),
        );
        return in_order(dw, transpose_dy);
    }
    // Each thread sums its own images' products (serial GEMMs), then the sums are added; all
    // of them in the same layout.
    let per_group = g.batch.div_ceil(groups);
    let transpose_dy = g.weight_grad_transposes_dy(per_group);
    let firsts: Vec<usize> = (0..g.batch).step_by(per_group).collect();
    let sums: Vec<Vec<f32>> = firsts
        .into_par_iter()
        .map(|first| {
            let images = first..(first + per_group).min(g.batch);
            weight_grad_of(g, x, dy, images, transpose_dy, gemm::Parallelism::None)
        })
        .collect();
    let mut sums = sums.into_iter();
    let mut dw = sums.next().expect("at least two groups");
    for sum in sums {
        dw.par_chunks_mut(SUM_TASK)
            .zip(sum.par_chunks(SUM_TASK))
            .for_each(|(into, from)| {
                for (a, b) in into.iter_mut().zip(from) {
                    *a += b;
                }
            });
    }
    in_order(dw, transpose_dy)
}

/// `src [rows, cols]` transposed: `[cols, rows]`.
fn transposed(src: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut dst = vec![0.0; src.len()];
    transpose::transpose(src, &mut dst, cols, rows);
    dst
}

/// Elements per task when the threads' weight-gradient sums are added.
const SUM_TASK: usize = 16 * 1024;

/// The weight gradient's part from images `images` (all of them: the whole gradient):
/// `dw [O, K]`, or with `transpose_dy` its transpose `dwᵀ [K, O]` (see
/// [`ConvGeometry::weight_grad_transposes_dy`]).
///
/// Why transposed: gemm computes a row-major destination as its transpose, which makes the
/// im2col matrix (`[K, cols]`, contiguous along the reduction) its left operand, packed by
/// gathering `K` rows at a stride of `cols` floats for every reduction step; a power-of-two
/// stride (32² = 1024 floats) maps them all onto one L1 set, and that packing was 10 % of the
/// `small_cpu` step. With a column-major destination the left operand is `dy`, and transposed
/// first (cache-blocked: `[cols, O]`, unit row stride) gemm reads it without packing; the
/// im2col matrix is its right operand, read in place. With many channels or a short reduction
/// gemm does better with the packed layout (see [`TRANSPOSED_DY_MAX_CHANNELS`]).
fn weight_grad_of(
    g: &ConvGeometry,
    x: &[f32],
    dy: &[f32],
    images: Range<usize>,
    transpose_dy: bool,
    parallelism: gemm::Parallelism,
) -> Vec<f32> {
    let (k, p, o) = (g.k(), g.p(), g.c_out);
    let mut dw = Output::new(o * k);
    let nb_max = g.chunk();
    let dy_len = if nb_max == 1 && !transpose_dy {
        0
    } else {
        o * nb_max * p
    };
    let col_len = if g.pointwise() && nb_max == 1 {
        0
    } else {
        k * nb_max * p
    };
    with_scratch(col_len, dy_len, |col, dy_chunk| {
        for (index, (first, nb)) in chunks_in(g, images).enumerate() {
            let cols = nb * p;
            // The dy chunk `[O, cols]`, and its element strides (row, column).
            let (lhs_dy, lhs_strides): (&[f32], [isize; 2]) = if transpose_dy {
                let dy_t = &mut dy_chunk[..cols * o];
                transpose_images(&dy[first * o * p..][..nb * o * p], o, p, dy_t);
                (dy_t, [1, o as isize])
            } else if nb == 1 {
                (&dy[first * o * p..][..o * p], [cols as isize, 1])
            } else {
                let dy_chunk = &mut dy_chunk[..o * cols];
                gather(dy, o, p, first, nb, dy_chunk);
                (dy_chunk, [cols as isize, 1])
            };
            let rhs: &[f32] = if g.pointwise() && nb == 1 {
                &x[first * g.c_in * p..][..g.c_in * p]
            } else {
                let col = &mut col[..k * cols];
                if g.pointwise() {
                    gather(x, g.c_in, p, first, nb, col);
                } else {
                    im2col(g, x, first, nb, col);
                }
                col
            };
            let dw_strides = if transpose_dy {
                [1, o as isize]
            } else {
                [k as isize, 1]
            };
            // SAFETY: the dy chunk is [O, cols] with `lhs_strides`, colᵀ is [cols, K] (element
            // (q, r) at r·cols + q), dw is [O, K] with `dw_strides`: written by the first
            // chunk, accumulated into by the others.
            unsafe {
                gemm_f32(
                    [o, k, cols],
                    dw.ptr(0),
                    dw_strides,
                    index > 0,
                    lhs_dy.as_ptr(),
                    lhs_strides,
                    rhs.as_ptr(),
                    [1, cols as isize],
                    parallelism,
                );
            }
        }
    });
    // SAFETY: the first chunk's GEMM wrote all of dw (`images` is never empty).
    unsafe { dw.finish() }
}

/// Transposes each image's `[rows, p]` block of `src` (`[nb, rows, p]`) into `dst [nb·p, rows]`:
/// image `i`'s position `s` becomes row `i·p + s`. Images in parallel.
fn transpose_images(src: &[f32], rows: usize, p: usize, dst: &mut [f32]) {
    dst.par_chunks_mut(rows * p)
        .zip(src.par_chunks(rows * p))
        .for_each(|(out, image)| transpose::transpose(image, out, p, rows));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Direct definition of the convolution, for checking the GEMM formulation.
    fn reference(g: &ConvGeometry, x: &[f32], w: &[f32]) -> Vec<f32> {
        let mut y = vec![0.0f32; g.batch * g.c_out * g.p()];
        for n in 0..g.batch {
            for o in 0..g.c_out {
                for oh in 0..g.out_height {
                    for ow in 0..g.out_width {
                        let mut acc = 0.0f64;
                        for c in 0..g.c_in {
                            for ki in 0..g.kernel[0] {
                                for kj in 0..g.kernel[1] {
                                    let Some(at) = input_at(g, [n, c], [oh, ow], [ki, kj]) else {
                                        continue;
                                    };
                                    let wv =
                                        w[((o * g.c_in + c) * g.kernel[0] + ki) * g.kernel[1] + kj];
                                    acc += (x[at] * wv) as f64;
                                }
                            }
                        }
                        y[((n * g.c_out + o) * g.out_height + oh) * g.out_width + ow] = acc as f32;
                    }
                }
            }
        }
        y
    }

    /// The index in `x` of the input that output `(oh, ow)` of image `n` reads at channel `c`
    /// and tap `(ki, kj)`; `None` in the padding.
    fn input_at(
        g: &ConvGeometry,
        [n, c]: [usize; 2],
        [oh, ow]: [usize; 2],
        [ki, kj]: [usize; 2],
    ) -> Option<usize> {
        let ih = (oh * g.stride[0] + ki * g.dilation[0]).checked_sub(g.padding[0])?;
        let iw = (ow * g.stride[1] + kj * g.dilation[1]).checked_sub(g.padding[1])?;
        (ih < g.height && iw < g.width).then(|| ((n * g.c_in + c) * g.height + ih) * g.width + iw)
    }

    /// `dw[o, c, ki, kj] = Σ_n Σ_(oh, ow) dy[n, o, oh, ow] · x[n, c, ih, iw]`, in f64.
    fn reference_weight_grad(g: &ConvGeometry, x: &[f32], dy: &[f32]) -> Vec<f32> {
        let mut dw = vec![0.0f32; g.c_out * g.k()];
        for o in 0..g.c_out {
            for c in 0..g.c_in {
                for ki in 0..g.kernel[0] {
                    for kj in 0..g.kernel[1] {
                        let mut acc = 0.0f64;
                        for n in 0..g.batch {
                            for oh in 0..g.out_height {
                                for ow in 0..g.out_width {
                                    let Some(at) = input_at(g, [n, c], [oh, ow], [ki, kj]) else {
                                        continue;
                                    };
                                    let dyv = dy[((n * g.c_out + o) * g.out_height + oh)
                                        * g.out_width
                                        + ow];
                                    acc += f64::from(x[at]) * f64::from(dyv);
                                }
                            }
                        }
                        dw[((o * g.c_in + c) * g.kernel[0] + ki) * g.kernel[1] + kj] = acc as f32;
                    }
                }
            }
        }
        dw
    }

    /// Both layouts of the weight gradient's GEMM (`dy` as is and transposed), one image and
    /// several per chunk, on one thread (the whole batch in one call) and split across three,
    /// element by element against the definition.
    #[test]
    fn both_weight_gradient_layouts_match_the_definition() {
        let padded = ConvOptions::new([1, 1], [1, 1], [1, 1], 1);
        let pointwise = ConvOptions::new([1, 1], [0, 0], [1, 1], 1);
        let cases = [
            // P = 256: 4 images per chunk, 1024 columns: transposed.
            ([4, 3, 16, 16], [4, 3, 3, 3], padded.clone(), true),
            // P = 1056: one image per chunk: transposed.
            ([2, 5, 32, 33], [4, 5, 1, 1], pointwise.clone(), true),
            // More outputs than K: as is.
            ([2, 5, 32, 33], [6, 5, 1, 1], pointwise.clone(), false),
            // P = 16: 80 columns: as is.
            ([5, 6, 4, 4], [3, 6, 3, 3], padded, false),
            // 300 output channels: as is.
            ([2, 4, 24, 24], [300, 4, 1, 1], pointwise, false),
        ];
        for threads in [1, 3] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("a thread pool");
            for (x_shape, w_shape, options, transposed_layout) in cases.clone() {
                let g = ConvGeometry::new(x_shape, w_shape, &options).expect("supported");
                if threads == 1 {
                    assert_eq!(
                        g.weight_grad_transposes_dy(g.batch),
                        transposed_layout,
                        "{x_shape:?}"
                    );
                }
                let x = values(x_shape.iter().product(), 6);
                let dy = values(g.output_shape().iter().product(), 7);
                let got = pool.install(|| conv2d_weight_grad(&g, &x, &dy));
                let want = reference_weight_grad(&g, &x, &dy);
                for (index, (got, want)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                        "{x_shape:?}, {threads} threads, element {index}: {got} vs {want}"
                    );
                }
            }
        }
    }

    fn values(len: usize, seed: u32) -> Vec<f32> {
        let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(12345);
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                (state % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    fn dot(a: &[f32], b: &[f32]) -> f64 {
        a.iter()
            .zip(b)
            .map(|(a, b)| (*a as f64) * (*b as f64))
            .sum()
    }

    /// Forward against the definition; both gradients through the adjoint identities
    /// `⟨conv(x, w), dy⟩ = ⟨x, dx(dy)⟩ = ⟨w, dw(x, dy)⟩`.
    fn check(x_shape: [usize; 4], w_shape: [usize; 4], options: ConvOptions<2>) {
        let g = ConvGeometry::new(x_shape, w_shape, &options).expect("supported geometry");
        let x = values(x_shape.iter().product(), 1);
        let w = values(w_shape.iter().product(), 2);
        let dy = values(g.output_shape().iter().product(), 3);
        let y = conv2d_forward(&g, &x, &w);
        let expected = reference(&g, &x, &w);
        for (got, want) in y.iter().zip(&expected) {
            assert!(
                (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                "{got} vs {want}"
            );
        }
        let pairing = dot(&y, &dy);
        let dx = conv2d_data_grad(&g, &w, &dy);
        let dw = conv2d_weight_grad(&g, &x, &dy);
        let tolerance = 1e-4 * (1.0 + pairing.abs());
        assert!((dot(&x, &dx) - pairing).abs() <= tolerance, "data gradient");
        assert!(
            (dot(&w, &dw) - pairing).abs() <= tolerance,
            "weight gradient"
        );
    }

    #[test]
    fn matches_the_definition_for_resnet_like_layers() {
        // 3×3 padded, strided, 1×1 (pointwise and strided), the 7×7 stem.
        check(
            [2, 3, 9, 9],
            [4, 3, 3, 3],
            ConvOptions::new([1, 1], [1, 1], [1, 1], 1),
        );
        check(
            [3, 4, 9, 8],
            [5, 4, 3, 3],
            ConvOptions::new([2, 2], [1, 1], [1, 1], 1),
        );
        check(
            [2, 6, 5, 5],
            [3, 6, 1, 1],
            ConvOptions::new([1, 1], [0, 0], [1, 1], 1),
        );
        check(
            [2, 6, 7, 7],
            [3, 6, 1, 1],
            ConvOptions::new([2, 2], [0, 0], [1, 1], 1),
        );
        check(
            [1, 3, 16, 16],
            [4, 3, 7, 7],
            ConvOptions::new([2, 2], [3, 3], [1, 1], 1),
        );
    }

    #[test]
    fn handles_asymmetric_kernels_strides_and_dilation() {
        check(
            [2, 3, 10, 7],
            [2, 3, 3, 2],
            ConvOptions::new([2, 1], [2, 0], [2, 3], 1),
        );
        check(
            [1, 2, 4, 4],
            [3, 2, 5, 5],
            ConvOptions::new([3, 3], [4, 4], [1, 1], 1),
        );
    }

    #[test]
    fn merges_small_images_into_one_chunk() {
        // P = 4 < MIN_COLUMNS: all five images in one GEMM, pointwise and im2col.
        check(
            [5, 8, 2, 2],
            [6, 8, 1, 1],
            ConvOptions::new([1, 1], [0, 0], [1, 1], 1),
        );
        check(
            [5, 8, 2, 2],
            [6, 8, 3, 3],
            ConvOptions::new([1, 1], [1, 1], [1, 1], 1),
        );
    }

    #[test]
    fn a_weight_gradient_split_across_threads_equals_the_definition() {
        // 3 threads over 5 images: groups of 2, 2 and 1; one image per chunk (P = 1056 ≥
        // MIN_COLUMNS) and merged chunks (P = 16), im2col and pointwise.
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .expect("a thread pool");
        let plain = ConvOptions::new([1, 1], [1, 1], [1, 1], 1);
        let pointwise = ConvOptions::new([1, 1], [0, 0], [1, 1], 1);
        for (x_shape, w_shape, options) in [
            ([5, 3, 32, 33], [4, 3, 3, 3], plain.clone()),
            ([5, 6, 4, 4], [3, 6, 3, 3], plain),
            ([5, 6, 32, 33], [3, 6, 1, 1], pointwise),
        ] {
            let g = ConvGeometry::new(x_shape, w_shape, &options).expect("supported geometry");
            assert!(g.c_out * g.k() <= SPLIT_BATCH_MAX_OUTPUTS);
            let x = values(x_shape.iter().product(), 4);
            let dy = values(g.output_shape().iter().product(), 5);
            let split = pool.install(|| conv2d_weight_grad(&g, &x, &dy));
            let serial = reference_weight_grad(&g, &x, &dy);
            assert_eq!(split.len(), serial.len());
            for (got, want) in split.iter().zip(&serial) {
                assert!(
                    (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                    "{x_shape:?}: {got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn rejects_what_it_does_not_handle() {
        let grouped = ConvOptions::new([1, 1], [0, 0], [1, 1], 2);
        assert_eq!(
            ConvGeometry::new([1, 4, 5, 5], [4, 2, 1, 1], &grouped),
            None
        );
        let plain = ConvOptions::new([1, 1], [0, 0], [1, 1], 1);
        assert_eq!(ConvGeometry::new([1, 4, 5, 5], [4, 3, 1, 1], &plain), None);
        assert_eq!(ConvGeometry::new([1, 4, 2, 2], [4, 4, 3, 3], &plain), None);
    }
}
