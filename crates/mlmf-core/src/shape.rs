//! Tensor shapes: dimensions whose element count is checked against overflow when made.

use std::fmt;

/// Dimensions in numpy/PyTorch order: slowest first, the row length last.
/// The element count is checked against overflow when the shape is made, so it never wraps.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Shape {
    dims: Vec<usize>,
    elems: u64,
}

impl Shape {
    /// `None` when the product of `dims` does not fit in 64 bits (or in `usize`).
    pub fn new(dims: Vec<usize>) -> Option<Shape> {
        let mut elems: u64 = 1;
        for &d in &dims {
            elems = elems.checked_mul(u64::try_from(d).ok()?)?;
        }
        usize::try_from(elems).ok()?;
        Some(Shape { dims, elems })
    }

    /// Like [`Shape::new`] for dimensions that came from a file as `u64`.
    pub fn from_u64(dims: &[u64]) -> Option<Shape> {
        let dims = dims
            .iter()
            .map(|&d| usize::try_from(d).ok())
            .collect::<Option<Vec<_>>>()?;
        Shape::new(dims)
    }

    pub fn scalar() -> Shape {
        Shape {
            dims: Vec::new(),
            elems: 1,
        }
    }

    pub fn dims(&self) -> &[usize] {
        &self.dims
    }

    pub fn rank(&self) -> usize {
        self.dims.len()
    }

    pub fn elem_count(&self) -> u64 {
        self.elems
    }

    /// Length of the last (fastest) dimension; 1 for a scalar.
    pub fn row_len(&self) -> usize {
        self.dims.last().copied().unwrap_or(1)
    }
}

impl fmt::Debug for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.dims)
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.dims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn element_count_is_checked() {
        assert_eq!(Shape::new(vec![2, 3, 4]).unwrap().elem_count(), 24);
        assert_eq!(Shape::new(vec![]).unwrap().elem_count(), 1);
        assert_eq!(Shape::new(vec![0, 7]).unwrap().elem_count(), 0);
        assert!(Shape::from_u64(&[1 << 33, 1 << 33]).is_none());
        assert!(Shape::from_u64(&[u64::MAX, 2]).is_none());
    }
}
