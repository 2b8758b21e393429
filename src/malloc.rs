//! Giving the start-up burst's memory back to the system.
//!
//! With many credentials, the start is a burst: every credential's start
//! and login futures, the answers' buffers and the blocking pool's writes
//! are allocated at once and freed a moment later. glibc keeps the freed
//! pages, and since the long-lived allocations made at the same time sit
//! between them, the top of the heap never comes down: with 1000
//! credentials, about 1.1 MiB of resident memory held by nothing (issue
//! 18). [`release_free_memory`] returns every whole free page.

/// Returns the heap's free pages to the system (glibc's `malloc_trim`,
/// which also releases whole free pages inside the heap, not only at its
/// top). A no-op where the C library has no such call (musl: the static
/// build), and cheap enough to call after any burst: it walks the free
/// lists once.
pub(crate) fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` takes no pointer and has no precondition; it
    // is thread-safe (it takes each arena's lock) and only returns pages
    // that hold no allocation.
    #[allow(unsafe_code)]
    unsafe {
        nix::libc::malloc_trim(0);
    }
}
