//! The C heap's shape, set first thing in `main`.
//!
//! glibc's malloc gives threads that allocate at once heaps (arenas) of their own, up to eight
//! per core, and memory freed into one heap serves only the threads that use it. A worker's
//! fetch threads decode photos of tens of megabytes now and then: each heap grows to hold the
//! largest photos its threads met, and the process holds that several times over (the
//! real-photo job peaked at 424-464 MiB with glibc's defaults and at 187 MiB with one heap, at
//! the same speed: BENCHMARKS.md). Small allocations still come from each thread's own cache
//! (glibc's tcache), without taking the heap's lock.

/// Has glibc's malloc keep one heap for every thread, unless `MALLOC_ARENA_MAX` says otherwise.
/// Call it first in `main`, before any thread starts. Elsewhere (musl, macOS), nothing.
pub fn one_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
            return;
        }
        /// glibc's `M_ARENA_MAX` (malloc.h).
        const M_ARENA_MAX: std::ffi::c_int = -8;
        #[allow(unsafe_code)]
        unsafe extern "C" {
            fn mallopt(param: std::ffi::c_int, value: std::ffi::c_int) -> std::ffi::c_int;
        }
        #[allow(unsafe_code)]
        // SAFETY: `mallopt` takes two integers and changes a setting glibc reads under its own
        // lock; M_ARENA_MAX is one it documents. It fails only for an unknown setting, and a
        // heap that stays as it was is no error.
        unsafe {
            mallopt(M_ARENA_MAX, 1);
        }
    }
}
