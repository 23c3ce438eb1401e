//! Bounded reads of the target's memory with `process_vm_readv`: no stop,
//! no `/proc/<pid>/mem` file descriptor; an unmapped address is an error,
//! never a fault in our process.

/// Reads up to `buf.len()` bytes at `addr` of `pid`; returns how many were
/// read (a short read stops at the first unreadable page).
pub(crate) fn read(pid: u32, addr: u64, buf: &mut [u8]) -> std::io::Result<usize> {
    if buf.is_empty() {
        return Ok(0);
    }
    let pid = libc::pid_t::try_from(pid).map_err(|_| std::io::Error::from_raw_os_error(libc::ESRCH))?;
    let remote_addr = usize::try_from(addr).map_err(|_| std::io::Error::from_raw_os_error(libc::EFAULT))?;
    let local = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    let remote = libc::iovec { iov_base: remote_addr as *mut libc::c_void, iov_len: buf.len() };
    // SAFETY: `local` describes our own writable buffer of `buf.len()` bytes,
    // borrowed mutably for the call; the remote range is checked by the
    // kernel (EFAULT), never dereferenced by us.
    let n = unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) };
    usize::try_from(n).map_err(|_| std::io::Error::last_os_error())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_our_own_memory_and_refuses_unmapped() {
        let value: u64 = 0x1122_3344_5566_7788;
        let mut buf = [0u8; 8];
        let addr = std::ptr::addr_of!(value) as u64;
        assert_eq!(read(std::process::id(), addr, &mut buf).expect("read"), 8);
        assert_eq!(u64::from_ne_bytes(buf), value);
        assert!(read(std::process::id(), 8, &mut buf).is_err());
    }
}
