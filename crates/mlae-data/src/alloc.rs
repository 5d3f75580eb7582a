//! The big host buffers of decoding (a split's pixels, an image at its output size) are asked
//! of the allocator fallibly: a size that cannot be had becomes a [`DataError::OutOfMemory`]
//! naming what it was for, instead of the process aborting with a backtrace.

use crate::error::{DataError, Result};

/// An empty vector with room for `len` bytes, or the error for `what`.
pub(crate) fn with_capacity(len: usize, what: impl FnOnce() -> String) -> Result<Vec<u8>> {
    let mut v = Vec::new();
    v.try_reserve_exact(len).map_err(|_| DataError::OutOfMemory { bytes: len, what: what() })?;
    Ok(v)
}

/// `len` zero bytes, or the error for `what`.
pub(crate) fn zeroed(len: usize, what: impl FnOnce() -> String) -> Result<Vec<u8>> {
    let mut v = with_capacity(len, what)?;
    v.resize(len, 0);
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_size_that_cannot_be_had_is_an_error_naming_it() {
        assert_eq!(zeroed(5, || "x".into()).unwrap(), [0; 5]);
        let err = zeroed(1 << 62, || "the pixels of split test".into()).unwrap_err().to_string();
        assert!(
            err.contains("the pixels of split test") && err.contains("4611686018427387904 bytes"),
            "{err}"
        );
    }
}
