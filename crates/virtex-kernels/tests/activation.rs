//! The fast ReLU against burn's: values and gradients on `Autodiff<Flex>`, values on `Flex`.

use burn::backend::{Autodiff, Flex};
use burn::tensor::{Distribution, Tensor};

type Ad = Autodiff<Flex>;

#[test]
fn relu_and_its_gradient_match_burn() {
    let device = Default::default();
    for dims in [[2, 3, 5, 7], [4, 64, 16, 16], [1, 1, 1, 1]] {
        // Normal values: about half negative; exact zeros are in the upstream gradient.
        let x = Tensor::<Ad, 4>::random(dims, Distribution::Normal(0.0, 1.0), &device);
        let g = Tensor::<Ad, 4>::random(dims, Distribution::Normal(0.0, 1.0), &device)
            .mask_fill(x.clone().greater_elem(1.0), 0.0);
        let run = |fast: bool| {
            let input = x.clone().require_grad();
            let y = if fast {
                virtex_kernels::relu(input.clone())
            } else {
                burn::tensor::activation::relu(input.clone())
            };
            // A second use of the input checks gradient accumulation.
            let grads = ((y.clone() * g.clone()).sum() + input.clone().sum()).backward();
            (y.inner(), input.grad(&grads).expect("input gradient"))
        };
        let (y, dx) = run(true);
        let (y_ref, dx_ref) = run(false);
        y.into_data().assert_eq(&y_ref.into_data(), true);
        dx.into_data().assert_eq(&dx_ref.into_data(), true);
    }
    let x = Tensor::<Flex, 2>::random([3, 4], Distribution::Normal(0.0, 1.0), &device);
    virtex_kernels::relu(x.clone())
        .into_data()
        .assert_eq(&burn::tensor::activation::relu(x).into_data(), true);
}
