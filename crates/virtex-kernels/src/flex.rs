//! The GEMM convolution on burn-flex tensors, and its autodiff operation.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::NodeId;
use burn::backend::{Autodiff, Flex};
use burn::tensor::ops::{ConvOptions, FloatTensor};
use burn::tensor::{DType, TensorData, TensorMetadata};
use burn_flex::FlexTensor;

use crate::im2col::{conv2d_data_grad, conv2d_forward, conv2d_weight_grad, ConvGeometry};

/// The backward pass of a one-input operation on `Flex`: `dx = input_grad(state, dy)`,
/// registered for the input when it needs a gradient (`dy` is consumed either way).
pub(crate) fn unary_backward<S>(
    ops: Ops<S, 1>,
    grads: &mut Gradients,
    input_grad: impl FnOnce(S, FlexTensor) -> FlexTensor,
) {
    let [parent] = ops.parents;
    let grad = grads.consume::<Flex>(&ops.node);
    if let Some(parent) = parent {
        grads.register::<Flex>(parent.id, input_grad(ops.state, grad));
    }
}

fn dims4(tensor: &FlexTensor) -> Option<[usize; 4]> {
    let shape = tensor.shape();
    (tensor.dtype() == DType::F32 && shape.num_dims() == 4)
        .then(|| [shape[0], shape[1], shape[2], shape[3]])
}

/// The geometry when the fast kernels handle these `f32` operands.
pub(crate) fn geometry(
    x: &FlexTensor,
    weight: &FlexTensor,
    options: &ConvOptions<2>,
) -> Option<ConvGeometry> {
    ConvGeometry::new(dims4(x)?, dims4(weight)?, options)
}

fn make(values: Vec<f32>, shape: [usize; 4]) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}

/// Forward convolution (no bias) of operands `geometry` accepted.
pub(crate) fn forward(g: &ConvGeometry, x: &FlexTensor, weight: &FlexTensor) -> FlexTensor {
    let (x, weight) = (x.to_contiguous(), weight.to_contiguous());
    let y = conv2d_forward(g, x.storage::<f32>(), weight.storage::<f32>());
    make(y, g.output_shape())
}

/// Gradient with respect to the input.
pub(crate) fn data_grad(
    g: &ConvGeometry,
    weight: &FlexTensor,
    output_grad: &FlexTensor,
) -> FlexTensor {
    let (weight, output_grad) = (weight.to_contiguous(), output_grad.to_contiguous());
    let dx = conv2d_data_grad(g, weight.storage::<f32>(), output_grad.storage::<f32>());
    make(dx, [g.batch, g.c_in, g.height, g.width])
}

/// Gradient with respect to the weight.
pub(crate) fn weight_grad(
    g: &ConvGeometry,
    x: &FlexTensor,
    output_grad: &FlexTensor,
) -> FlexTensor {
    let (x, output_grad) = (x.to_contiguous(), output_grad.to_contiguous());
    let dw = conv2d_weight_grad(g, x.storage::<f32>(), output_grad.storage::<f32>());
    make(dw, [g.c_out, g.c_in, g.kernel[0], g.kernel[1]])
}

/// The backward step of [`autodiff_conv2d`]: both gradients on the GEMM kernels.
#[derive(Debug)]
struct GemmConv2dBackward;

impl Backward<Flex, 2> for GemmConv2dBackward {
    /// Checkpointed input and weight, and the geometry.
    type State = (NodeId, NodeId, ConvGeometry);

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let [node_x, node_weight] = ops.parents;
        let output_grad = grads.consume::<Flex>(&ops.node);
        let (x_state, weight_state, g) = ops.state;
        let x: FlexTensor = checkpointer.retrieve_node_output(x_state);
        let weight: FlexTensor = checkpointer.retrieve_node_output(weight_state);
        if let Some(node) = node_x {
            grads.register::<Flex>(node.id, data_grad(&g, &weight, &output_grad));
        }
        if let Some(node) = node_weight {
            grads.register::<Flex>(node.id, weight_grad(&g, &x, &output_grad));
        }
    }
}

/// Convolution on `Autodiff<Flex, C>` whose forward and both gradients run on the GEMM kernels.
/// `None` when the operands are outside what the kernels handle (the caller uses burn's op).
pub(crate) fn autodiff_conv2d<C: CheckpointStrategy>(
    x: &FloatTensor<Autodiff<Flex, C>>,
    weight: &FloatTensor<Autodiff<Flex, C>>,
    options: &ConvOptions<2>,
) -> Option<FloatTensor<Autodiff<Flex, C>>> {
    let g = geometry(&x.primitive, &weight.primitive, options)?;
    let prepared = GemmConv2dBackward
        .prepare::<C>([x.node.clone(), weight.node.clone()])
        .compute_bound()
        .stateful();
    Some(match prepared {
        OpsKind::Tracked(mut prep) => {
            let x_state = prep.checkpoint(x);
            let weight_state = prep.checkpoint(weight);
            let output = forward(&g, &x.primitive, &weight.primitive);
            prep.finish((x_state, weight_state, g), output)
        }
        OpsKind::UnTracked(prep) => prep.finish(forward(&g, &x.primitive, &weight.primitive)),
    })
}
