//! Small private helpers shared by the sysfs, cgroup and syscall code.

use std::io::ErrorKind;
use std::path::Path;

/// Bits per word of a kernel CPU or node mask (`unsigned long[]`).
pub(crate) const WORD_BITS: usize = libc::c_ulong::BITS as usize;

/// Reads a text file, mapping "does not exist" to `Ok(None)` so callers can
/// fall back; every other error is returned.
pub(crate) fn read_if_exists(path: &Path) -> std::io::Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The indices of the set bits of a kernel mask, ascending.
pub(crate) fn mask_bits(mask: &[libc::c_ulong]) -> Vec<usize> {
    let mut bits = Vec::new();
    for (word_index, &word) in mask.iter().enumerate() {
        for bit in 0..WORD_BITS {
            if word & (1 << bit) != 0 {
                bits.push(word_index * WORD_BITS + bit);
            }
        }
    }
    bits
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_bits_decodes_words_in_order() {
        let mask: [libc::c_ulong; 2] = [0b1011, 1 << 3];
        assert_eq!(mask_bits(&mask), vec![0, 1, 3, WORD_BITS + 3]);
        assert!(mask_bits(&[0, 0]).is_empty());
    }
}
