//! Binding a memory range to a NUMA node (`mbind(2)` with `MPOL_BIND`).
//!
//! The nodemask passed to the kernel is an array of `c_ulong` with bit `n` set
//! for node `n`; `maxnode` is one more than the number of bits, because the
//! kernel reads `maxnode - 1` bits.

use crate::sys::{mask_bits, WORD_BITS};

/// `MPOL_BIND` from `<linux/mempolicy.h>`.
const MPOL_BIND: libc::c_int = 2;
/// `MPOL_MF_MOVE`: migrate pages already faulted in elsewhere.
const MPOL_MF_MOVE: libc::c_uint = 1 << 1;
/// `MPOL_F_ADDR` for `get_mempolicy`: report the policy of an address.
const MPOL_F_ADDR: libc::c_ulong = 1 << 1;
/// Nodes accepted (the kernel's `MAX_NUMNODES` is at most 1024).
const MAX_NODE: usize = 1023;

/// Why a memory policy call failed.
#[derive(Debug, thiserror::Error)]
pub enum MemPolicyError {
    /// The start address is not page-aligned (mbind requires it).
    #[error("mbind range start {addr:#x} is not aligned to the {page_size}-byte page size")]
    Unaligned {
        /// The start address.
        addr: usize,
        /// The page size.
        page_size: usize,
    },
    /// Node number above the kernel's maximum.
    #[error("numa node {node} is above the maximum {MAX_NODE}")]
    NodeOutOfRange {
        /// The node.
        node: usize,
    },
    /// The kernel has no NUMA support (`CONFIG_NUMA` off).
    #[error("the kernel does not support memory policies (ENOSYS: built without CONFIG_NUMA)")]
    Unsupported,
    /// The syscall failed.
    #[error("{call} for {len} bytes at {addr:#x} on node {node} failed: {source}")]
    Syscall {
        /// `mbind` or `get_mempolicy`.
        call: &'static str,
        /// Range start.
        addr: usize,
        /// Range length.
        len: usize,
        /// The node.
        node: usize,
        /// The OS error.
        source: std::io::Error,
    },
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions; _SC_PAGESIZE is always supported.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).unwrap_or(4096)
}

/// Binds the pages of `[ptr, ptr + len)` to NUMA `node`: future faults allocate
/// there, and pages already present move there (`MPOL_MF_MOVE`). `ptr` must be
/// page-aligned (an `mmap` result is). The memory is neither read nor written
/// through Rust; the kernel validates the range (unmapped → `EFAULT`/`ENOMEM`).
// The pointer is never dereferenced: the kernel uses it as a virtual address to
// find the VMAs whose policy changes, and page migration preserves contents.
#[allow(clippy::not_unsafe_ptr_arg_deref)]
pub fn bind_memory_to_node(ptr: *mut u8, len: usize, node: usize) -> Result<(), MemPolicyError> {
    let addr = ptr as usize;
    let page_size = page_size();
    if !addr.is_multiple_of(page_size) {
        return Err(MemPolicyError::Unaligned { addr, page_size });
    }
    if node > MAX_NODE {
        return Err(MemPolicyError::NodeOutOfRange { node });
    }
    let mut mask: Vec<libc::c_ulong> = vec![0; node / WORD_BITS + 1];
    if let Some(word) = mask.get_mut(node / WORD_BITS) {
        *word |= 1 << (node % WORD_BITS);
    }
    let maxnode = mask.len() * WORD_BITS + 1;
    // SAFETY: mbind only changes the kernel's policy for the range and reads
    // `mask.len()` words from `mask`, a live buffer covering `maxnode - 1` bits.
    // It does not touch the range's contents beyond migrating pages, which
    // preserves them; an invalid range is rejected by the kernel with an error.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mbind,
            ptr,
            len,
            MPOL_BIND,
            mask.as_ptr(),
            maxnode,
            MPOL_MF_MOVE,
        )
    };
    if rc != 0 {
        return Err(syscall_error("mbind", addr, len, node));
    }
    Ok(())
}

/// The policy mode and node mask in force at `ptr` (`get_mempolicy` with
/// `MPOL_F_ADDR`), as `(mode, nodes)`; mode 2 is `MPOL_BIND`.
// The pointer is never dereferenced: the kernel uses it only to look up a VMA.
#[allow(clippy::not_unsafe_ptr_arg_deref)]
pub fn memory_policy_at(ptr: *const u8) -> Result<(i32, Vec<usize>), MemPolicyError> {
    let addr = ptr as usize;
    let mut mode: libc::c_int = 0;
    let mut mask: Vec<libc::c_ulong> = vec![0; (MAX_NODE + 1) / WORD_BITS];
    let maxnode = mask.len() * WORD_BITS;
    // SAFETY: get_mempolicy writes one c_int to `mode` and at most `maxnode`
    // bits into `mask`, both live writable buffers of that size; `ptr` is only
    // used as a lookup key for the VMA (an unmapped address gives EFAULT).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_get_mempolicy,
            &raw mut mode,
            mask.as_mut_ptr(),
            maxnode,
            ptr,
            MPOL_F_ADDR,
        )
    };
    if rc != 0 {
        return Err(syscall_error("get_mempolicy", addr, 0, 0));
    }
    Ok((mode, mask_bits(&mask)))
}

fn syscall_error(call: &'static str, addr: usize, len: usize, node: usize) -> MemPolicyError {
    let source = std::io::Error::last_os_error();
    if source.raw_os_error() == Some(libc::ENOSYS) {
        MemPolicyError::Unsupported
    } else {
        MemPolicyError::Syscall {
            call,
            addr,
            len,
            node,
            source,
        }
    }
}

/// The `MPOL_BIND` mode number, for comparing with [`memory_policy_at`].
pub const MODE_BIND: i32 = MPOL_BIND;

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design
mod tests {
    use super::*;

    #[test]
    fn binds_an_anonymous_mapping_to_node_zero() {
        let len = 4 * page_size();
        // SAFETY: a fresh private anonymous mapping; no existing memory is affected.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED);
        let ptr = ptr.cast::<u8>();
        match bind_memory_to_node(ptr, len, 0) {
            Err(MemPolicyError::Unsupported) => {
                eprintln!("SKIP binds_an_anonymous_mapping_to_node_zero: kernel lacks CONFIG_NUMA (mbind ENOSYS)");
            }
            other => {
                other.unwrap();
                // SAFETY: the mapping is `len` bytes, readable and writable.
                unsafe { ptr.write_bytes(0xa5, len) };
                let (mode, nodes) = memory_policy_at(ptr).unwrap();
                assert_eq!(mode, MODE_BIND);
                assert_eq!(nodes, vec![0]);
            }
        }
        // SAFETY: unmapping exactly the mapping created above, no longer used.
        assert_eq!(unsafe { libc::munmap(ptr.cast(), len) }, 0);
    }

    #[test]
    fn rejects_unaligned_and_absurd_nodes() {
        let ptr = std::ptr::without_provenance_mut::<u8>(page_size() + 1);
        assert!(matches!(
            bind_memory_to_node(ptr, 1, 0),
            Err(MemPolicyError::Unaligned { .. })
        ));
        let ptr = std::ptr::without_provenance_mut::<u8>(page_size());
        assert!(matches!(
            bind_memory_to_node(ptr, 1, 5000),
            Err(MemPolicyError::NodeOutOfRange { node: 5000 })
        ));
    }
}
