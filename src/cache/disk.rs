//! The cache's file system: how much room it has, which write errors mean
//! "no room", and the sweep of `tmp/` at start.

use std::io;
use std::path::Path;

/// Free bytes the cache directory's file system has for hoard (`statvfs`:
/// blocks available to unprivileged users).
pub(super) fn free_bytes(dir: &Path) -> io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is a NUL-terminated string and `st` points to writable
    // memory of the struct's size; it is read only when the call succeeded.
    let st = unsafe {
        if libc::statvfs(path.as_ptr(), st.as_mut_ptr()) != 0 {
            return Err(io::Error::last_os_error());
        }
        st.assume_init()
    };
    // The field types differ between platforms (u32 on some 32-bit ones).
    #[allow(clippy::useless_conversion)]
    Ok(u64::from(st.f_bavail).saturating_mul(u64::from(st.f_frsize)))
}

/// Whether a write failed for lack of space or over a file-size limit
/// (ENOSPC, EFBIG, EDQUOT): the disk's fault, not the request's.
pub fn is_out_of_space(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::FileTooLarge | io::ErrorKind::QuotaExceeded
    ) || matches!(
        e.raw_os_error(),
        Some(libc::ENOSPC) | Some(libc::EFBIG) | Some(libc::EDQUOT)
    )
}

/// Removes temp files left by fills and writes that a crash interrupted:
/// they were never verified, so they are not content.
pub(super) fn clean_tmp(tmp: &Path) -> io::Result<usize> {
    std::fs::create_dir_all(tmp)?;
    let mut removed = 0;
    // A file that vanishes between the listing and its removal is gone,
    // which is all this wants (an in-process restart can race the old
    // instance's last fill deleting its own temp file).
    let gone = |e: &io::Error| e.kind() == io::ErrorKind::NotFound;
    for entry in std::fs::read_dir(tmp)? {
        let entry = entry?;
        match entry.file_type() {
            Ok(t) if t.is_file() => {}
            Ok(_) => continue,
            Err(e) if gone(&e) => continue,
            Err(e) => return Err(e),
        }
        match std::fs::remove_file(entry.path()) {
            Ok(()) => removed += 1,
            Err(e) if gone(&e) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(removed)
}
