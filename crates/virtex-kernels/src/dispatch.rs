//! Choosing a kernel by backend type while staying generic over `B: Backend`.
//!
//! Rust has no specialisation, so a generic function finds out whether `B` is `Flex` (or
//! `Autodiff<Flex>`) by comparing `TypeId`s, and moves its tensors to the concrete type through
//! `Any`: safe, free at run time (no copy, no allocation), and invisible in the public API.

use std::any::{Any, TypeId};

/// `value` as a `U` when `T` and `U` are the same type; the value back otherwise.
pub(crate) fn cast<T: 'static, U: 'static>(value: T) -> Result<U, T> {
    let mut slot = Some(value);
    match (&mut slot as &mut dyn Any).downcast_mut::<Option<U>>() {
        Some(target) => Ok(target.take().expect("the slot was just filled")),
        None => Err(slot.expect("the slot is still full")),
    }
}

/// Whether `B` and `T` are the same type.
pub(crate) fn is<B: 'static, T: 'static>() -> bool {
    TypeId::of::<B>() == TypeId::of::<T>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn casts_only_between_identical_types() {
        assert_eq!(cast::<u32, u32>(7), Ok(7));
        assert_eq!(cast::<u32, i32>(7), Err(7));
        assert!(is::<Vec<u8>, Vec<u8>>());
        assert!(!is::<Vec<u8>, Vec<i8>>());
    }
}
