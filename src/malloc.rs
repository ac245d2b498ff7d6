//! glibc malloc settings for a process that streams blobs.
//!
//! A fill allocates a 256 KiB piece for every 256 KiB it receives, and the
//! HTTP stack's read buffers are of the same order. glibc serves blocks over
//! 128 KiB with `mmap` and trims an arena's top once more than twice that is
//! free, so such buffers went back to the kernel as soon as they were freed
//! and the next allocation faulted fresh, zeroed pages in again: a fifth of
//! hoard's CPU on a cold 1 GiB GET (1.87 CPU-seconds without these
//! settings, 1.49 with them; `clear_page_erms` and page faults in the
//! profile; see docs/benchmarks.md). Keeping blocks up to 4 MiB in the heap and trimming
//! only past 64 MiB free reuses the same pages; what is resident stays what
//! the busiest moment needed, which the bounded fill windows keep small.

/// Applies the settings, unless the operator chose malloc settings of
/// their own through `GLIBC_TUNABLES`. Call first thing in `main`, before
/// any thread starts.
pub fn tune() {
    if std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("glibc.malloc.")) {
        return;
    }
    apply();
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn apply() {
    // SAFETY: mallopt only changes allocator parameters; it is called before
    // any other thread exists (see `tune`).
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn apply() {}

/// Hands freed heap memory back to the kernel now, after a one-off burst
/// of small allocations (the start-up listing of a million blob names)
/// that the trim threshold above would otherwise keep resident for good.
pub fn release_free_memory() {
    release();
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn release() {
    // SAFETY: malloc_trim only returns free pages to the kernel; it is
    // thread-safe and leaves live allocations alone.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release() {}
