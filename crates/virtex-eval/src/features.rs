//! A dense feature matrix, what the SVMs train on.

use crate::error::{EvalError, Result};

/// `[rows, dim]` features, row-major, in `f64` (scikit-learn converts float32 input to float64
/// before liblinear sees it; so do we, exactly).
#[derive(Debug, Clone, PartialEq)]
pub struct Features {
    values: Vec<f64>,
    rows: usize,
    dim: usize,
}

impl Features {
    /// Wraps row-major values of shape `[rows, dim]`.
    pub fn new(values: Vec<f64>, rows: usize, dim: usize) -> Result<Self> {
        if values.len() != rows * dim {
            return Err(EvalError::Shape(format!(
                "{} feature values cannot form a [{rows}, {dim}] matrix",
                values.len()
            )));
        }
        if let Some(position) = values.iter().position(|v| !v.is_finite()) {
            return Err(EvalError::Shape(format!(
                "feature value at row {}, column {} is {} (features must be finite)",
                position / dim.max(1),
                position % dim.max(1),
                values[position]
            )));
        }
        Ok(Self { values, rows, dim })
    }

    /// Converts `f32` features (what a backbone produces) exactly to `f64`.
    pub fn from_f32(values: &[f32], rows: usize, dim: usize) -> Result<Self> {
        Self::new(values.iter().map(|&v| f64::from(v)).collect(), rows, dim)
    }

    /// Number of rows (images).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Feature dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Row `index`, `[dim]`.
    ///
    /// # Panics
    /// If `index >= rows`.
    pub fn row(&self, index: usize) -> &[f64] {
        &self.values[index * self.dim..(index + 1) * self.dim]
    }

    /// All values, row-major.
    pub fn values(&self) -> &[f64] {
        &self.values
    }

    /// The rows at `indices`, in that order.
    ///
    /// # Panics
    /// If an index is out of range.
    pub fn select(&self, indices: &[usize]) -> Self {
        let mut values = Vec::with_capacity(indices.len() * self.dim);
        for &index in indices {
            values.extend_from_slice(self.row(index));
        }
        Self {
            values,
            rows: indices.len(),
            dim: self.dim,
        }
    }
}
