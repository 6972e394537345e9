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
//! go idle.
//! What a comparison makes to keep goes to a heap of its own (`lasting`), so
//! that it does not hold the pages of what the comparison only passed through.
//! SQLite does not allocate through mimalloc but through the C library's
//! malloc, whose arenas keep what it frees: that heap is trimmed too.

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::ffi::c_void;
use std::sync::atomic::{AtomicPtr, Ordering};

use libmimalloc_sys::mi_heap_t;

#[global_allocator]
static ALLOCATOR: Allocator = Allocator;

/// mimalloc, with a second heap for what stays for the life of the process
/// once made (`lasting`). mimalloc hands a page back only when every block
/// in it is free, so one lasting block among a comparison's thousands of
/// passing ones keeps the whole page resident: a queue's metric series,
/// first made during a drift check, held 5 MiB of such pages at 100
/// queues. Kept apart, they share pages only with each other.
struct Allocator;

thread_local! {
    /// Set while this thread runs `lasting`.
    static LASTING: Cell<bool> = const { Cell::new(false) };
}

/// The heap of `lasting`, made by its first call.
static LASTING_HEAP: AtomicPtr<mi_heap_t> = AtomicPtr::new(std::ptr::null_mut());

/// The heap this thread allocates in now, when not mimalloc's default one.
fn lasting_heap() -> Option<*mut mi_heap_t> {
    let heap = LASTING_HEAP.load(Ordering::Relaxed);
    (LASTING.get() && !heap.is_null()).then_some(heap)
}

// SAFETY: each method forwards to mimalloc's matching aligned function,
// which meets `GlobalAlloc`'s contract for any heap; `mi_free` and
// `mi_realloc_aligned` take blocks of every heap.
unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let (size, align) = (layout.size(), layout.align());
        match lasting_heap() {
            Some(heap) => libmimalloc_sys::mi_heap_malloc_aligned(heap, size, align),
            None => libmimalloc_sys::mi_malloc_aligned(size, align),
        }
        .cast()
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let (size, align) = (layout.size(), layout.align());
        match lasting_heap() {
            Some(heap) => libmimalloc_sys::mi_heap_zalloc_aligned(heap, size, align),
            None => libmimalloc_sys::mi_zalloc_aligned(size, align),
        }
        .cast()
    }

    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        libmimalloc_sys::mi_free(ptr.cast::<c_void>());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let (ptr, align) = (ptr.cast::<c_void>(), layout.align());
        match lasting_heap() {
            Some(heap) => libmimalloc_sys::mi_heap_realloc_aligned(heap, ptr, new_size, align),
            None => libmimalloc_sys::mi_realloc_aligned(ptr, new_size, align),
        }
        .cast()
    }
}

/// Runs `make` with what it allocates in the lasting heap: for things made
/// in the middle of a large comparison that stay after it, such as a new
/// queue's metric series. What `make` allocates and frees again costs the
/// lasting heap a little room, nothing more.
pub(crate) fn lasting<T>(make: impl FnOnce() -> T) -> T {
    if LASTING_HEAP.load(Ordering::Acquire).is_null() {
        // SAFETY: makes a new, empty heap; a second one made by a racing
        // thread is deleted again, unused.
        let heap = unsafe { libmimalloc_sys::mi_heap_new() };
        if let Err(ours) = LASTING_HEAP.compare_exchange(
            std::ptr::null_mut(),
            heap,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            // SAFETY: `ours` was never handed out.
            unsafe { libmimalloc_sys::mi_heap_delete(ours) };
        }
    }
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            LASTING.set(self.0);
        }
    }
    let _restore = Restore(LASTING.replace(true));
    make()
}

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
///
/// The rows were allocated on the SQLite connection's own thread, whose
/// share comes back only once that thread exits: the source closes the
/// connection at the end of each read, which ends its thread
/// (`source::Backend::Sqlite`). When sqlx's idle reaper closed it instead,
/// on its own timer, the rows of a read of 100,000 (about 29 MiB) stayed
/// until the next comparison whenever the release came first.
pub(crate) fn release_after_comparison() {
    let request = RELEASE_REQUESTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
    RELEASES_SEEN.set(request);
    collect();
    trim_c_heap();
}

/// Gives back the free pages of the C library's heap. A read's SQLite
/// connection fills its page cache (up to 2 MiB by default) and statements
/// from glibc's malloc, in the arena of the connection's thread; once the
/// connection is closed glibc keeps those pages for later mallocs, returning
/// by itself only what borders the top of a heap. How much stayed varied
/// from read to read, 0.3 to 2.1 MiB at 100,000 rows. One call walks every
/// arena, so it is made once per release, not per thread.
fn trim_c_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: glibc walks and trims its own arenas; nothing is handed over.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Bumped by every `release_after_comparison`.
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
    // SAFETY: both only walk the allocator's own structures.
    unsafe {
        libmimalloc_sys::mi_collect(true);
        let lasting = LASTING_HEAP.load(Ordering::Acquire);
        if !lasting.is_null() {
            libmimalloc_sys::mi_heap_collect(lasting, true);
        }
    }
}

/// `lasting` for each step of `future`: for what a connection or a queue
/// handle sets up once and keeps, such as BullMQ's script texts, which
/// calls then clone and drop by the thousand.
pub(crate) async fn lasting_while<F: std::future::Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    std::future::poll_fn(|cx| lasting(|| future.as_mut().poll(cx))).await
}

#[cfg(test)]
mod tests {
    use super::*;

    extern "C" {
        fn mi_heap_of(p: *const c_void) -> *mut mi_heap_t;
    }

    fn heap_of(bytes: &[u8]) -> *mut mi_heap_t {
        // SAFETY: asks which heap owns a live block.
        unsafe { mi_heap_of(bytes.as_ptr().cast()) }
    }

    #[test]
    fn what_lasting_makes_is_kept_apart_from_the_rest() {
        let kept = lasting(|| vec![1u8; 100_000]);
        let passing = vec![1u8; 100_000];
        assert_eq!(heap_of(&kept), LASTING_HEAP.load(Ordering::Acquire));
        assert_ne!(heap_of(&passing), heap_of(&kept));
        let grown = lasting(|| {
            let mut grown = passing.clone();
            grown.resize(400_000, 2);
            grown
        });
        assert_eq!(heap_of(&grown), heap_of(&kept));
        let unwound = std::panic::catch_unwind(|| lasting(|| panic!("made nothing")));
        assert!(unwound.is_err());
        assert!(
            !LASTING.get(),
            "a panic leaves the thread in the default heap"
        );
    }

    #[tokio::test]
    async fn what_a_future_makes_in_lasting_while_is_kept_apart_after_an_await() {
        let made = lasting_while(async {
            tokio::task::yield_now().await;
            vec![1u8; 100_000]
        })
        .await;
        let passing = vec![1u8; 100_000];
        assert_eq!(heap_of(&made), LASTING_HEAP.load(Ordering::Acquire));
        assert_ne!(heap_of(&passing), heap_of(&made));
    }

    /// The C heap is glibc's only where `trim_c_heap` trims it.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    mod c_heap {
        use super::*;

        fn page_size() -> usize {
            // SAFETY: reads a constant of the system.
            usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096)
        }

        /// Of the pages in `span`, how many are resident.
        fn resident_pages(span: std::ops::Range<usize>) -> usize {
            let mut flags = vec![0u8; (span.end - span.start) / page_size()];
            // SAFETY: `span` is page-aligned and inside the C heap's mapping,
            // and `flags` has one byte per page of it.
            let done = unsafe {
                libc::mincore(
                    span.start as *mut c_void,
                    span.end - span.start,
                    flags.as_mut_ptr(),
                )
            };
            assert_eq!(done, 0, "mincore: {}", std::io::Error::last_os_error());
            flags.iter().filter(|&&f| f & 1 == 1).count()
        }

        /// What SQLite leaves: blocks of the C heap freed below one still in
        /// use, which glibc would keep resident for its next mallocs.
        #[test]
        fn what_the_c_heap_freed_is_given_back() {
            // Below glibc's mmap threshold, so that they come from an arena.
            const BLOCK: usize = 32 * 1024;
            const BLOCKS: usize = 64;
            let page = page_size();
            // SAFETY: plain mallocs and frees of the C heap; the freed blocks'
            // addresses are only passed to mincore, never dereferenced.
            let (before, after, pages) = unsafe {
                let blocks: Vec<*mut u8> = (0..BLOCKS)
                    .map(|_| {
                        let block = libc::malloc(BLOCK).cast::<u8>();
                        assert!(!block.is_null());
                        block.write_bytes(1, BLOCK);
                        block
                    })
                    .collect();
                let in_use = libc::malloc(BLOCK);
                let start = blocks.iter().map(|b| *b as usize).min().unwrap_or(0);
                let end = blocks.iter().map(|b| *b as usize).max().unwrap_or(0) + BLOCK;
                for block in blocks {
                    libc::free(block.cast());
                }
                let freed = start.next_multiple_of(page)..end / page * page;
                let before = resident_pages(freed.clone());
                release_after_comparison();
                let after = resident_pages(freed.clone());
                libc::free(in_use);
                (before, after, freed.len() / page)
            };
            assert!(
                before * 10 >= pages * 9,
                "{before} of {pages} pages were resident"
            );
            assert!(
                after * 10 <= pages,
                "{after} of {pages} pages still resident"
            );
        }
    }
}
