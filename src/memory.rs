//! The allocator, tuned for a process that idles most of the time and now and
//! then holds every row and scheduler of a large installation at once.
//!
//! mimalloc is fast at the burst (reading 100,000 rows, planning, writing), but
//! by default it commits its arena eagerly and purges freed pages only when
//! later allocations come by — which an idle sidecar never makes. So the peak
//! of the last recovery stayed resident. Lazy commit, and an explicit collect
//! after each large piece of work, bring it back down to its idle size.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc v3's option numbers (`mi_option_t` in its `mimalloc.h`); the
/// Rust bindings name only a few of them. The version is pinned in Cargo.lock.
const ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
const PURGE_DELAY_MS: libmimalloc_sys::mi_option_t = 15;

/// Sets the allocator's options. They only take full effect before the
/// first allocation reserves mimalloc's arena, which happens before `main`:
/// the binary runs this as an ELF constructor.
pub extern "C" fn tune_allocator() {
    // SAFETY: plain setters of mimalloc's global options, called before any
    // other thread exists.
    unsafe {
        libmimalloc_sys::mi_option_set(ARENA_EAGER_COMMIT, 0);
        libmimalloc_sys::mi_option_set(PURGE_DELAY_MS, 0);
    }
}

/// Hands memory freed by a large comparison or recovery back to the system.
pub fn release_freed_memory() {
    // SAFETY: `mi_collect` only walks the allocator's own structures.
    unsafe { libmimalloc_sys::mi_collect(true) }
}
