//! Disk I/O helpers for mbox writes: a write synced on its own range, and early writeback of
//! data that a later fsync will make durable. Owns no file and decides nothing about what is
//! written; never syncs more than it is asked to.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

/// Ask the kernel to start writing `file`'s dirty pages from `offset` on (`len` bytes, 0 for
/// all) without waiting. Only a head start for the fsync that follows a big write: it makes
/// nothing durable by itself, and failing (say, on a file system without it) changes nothing.
pub(super) fn start_writeback(file: &File, offset: u64, len: u64) {
    let (Ok(offset), Ok(len)) = (
        libc::off64_t::try_from(offset),
        libc::off64_t::try_from(len),
    ) else {
        return;
    };
    // SAFETY: plain system call on a descriptor we own; no memory is passed.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE);
    }
}

/// Write `bytes` at `offset` and make them durable, without syncing the rest of the file:
/// `pwritev2(RWF_DSYNC)` syncs the written range only. Where the kernel lacks it, a plain
/// write and `fdatasync`.
pub(super) fn write_durably(file: &File, bytes: &[u8], offset: u64) -> io::Result<()> {
    let mut done = 0usize;
    while done < bytes.len() {
        let rest = &bytes[done..];
        let iov = libc::iovec {
            iov_base: rest.as_ptr() as *mut libc::c_void,
            iov_len: rest.len(),
        };
        let at = libc::off_t::try_from(offset + done as u64)
            .map_err(|_| io::Error::other("mailbox too large"))?;
        // SAFETY: `iov` points into `bytes`, which outlives the call; the kernel only reads it.
        let n = unsafe { libc::pwritev2(file.as_raw_fd(), &iov, 1, at, libc::RWF_DSYNC) };
        if n < 0 {
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::ENOSYS | libc::EOPNOTSUPP | libc::EINVAL) => {
                    file.write_all_at(rest, offset + done as u64)?;
                    return file.sync_data();
                }
                _ => return Err(err),
            }
        }
        done += n as usize;
    }
    Ok(())
}
