//! The allocator, tuned for a process that idles most of the time and now and
//! then holds every row and scheduler of a large installation at once.
//!
//! mimalloc is fast at the burst (reading 100,000 rows, planning, writing), but
//! by default it commits its arena eagerly and purges freed pages only when
//! later allocations come by — which an idle sidecar never makes. So the peak
//! of the last recovery stayed resident. Lazy commit, and an explicit collect
//! after each large piece of work, bring it back down to its idle size. The
//! collect has to happen on every thread that took part (each returns only
//! what it allocated), so the runtime's worker threads collect when they next
//! go idle, and a second collect follows the SQLite connection's thread out.

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
/// This thread collects at once; every other runtime thread when it next
/// goes idle (`collect_when_idle`), as memory that a thread allocated is
/// returned only by that thread.
fn release_freed_memory() {
    let request = RELEASE_REQUESTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
    RELEASES_SEEN.set(request);
    collect();
}

/// `release_freed_memory` now, and once more after the source's idle
/// connection has closed: an SQLite connection has its own thread, which
/// allocated the rows the comparison read, and what that thread allocated
/// comes back only after it exits.
pub(crate) fn release_after_comparison() {
    release_freed_memory();
    tokio::spawn(async {
        let closed = crate::source::IDLE_CONNECTION_TIMEOUT + std::time::Duration::from_secs(1);
        tokio::time::sleep(closed).await;
        release_freed_memory();
    });
}

/// Bumped by every `release_freed_memory`.
static RELEASE_REQUESTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

thread_local! {
    /// The last request this thread has acted on.
    static RELEASES_SEEN: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// For the runtime's `on_thread_park`: collects once per request, so that a
/// worker thread that held part of a comparison gives its share back too.
/// Costs one atomic load on every other park.
pub(crate) fn collect_when_idle() {
    let requested = RELEASE_REQUESTS.load(std::sync::atomic::Ordering::Relaxed);
    if RELEASES_SEEN.get() != requested {
        RELEASES_SEEN.set(requested);
        collect();
    }
}

fn collect() {
    // SAFETY: `mi_collect` only walks the allocator's own structures.
    unsafe { libmimalloc_sys::mi_collect(true) }
}
