//! SQLite's own page cache, with one wasted scan taken out.
//!
//! When `balance_nonroot` puts sibling pages in page-number order it swaps
//! two pages through a temporary key: the lock-byte page, which sits at
//! 1 GiB (page 262,145 with 4 KiB pages) and never holds data. The default
//! cache (`pcache1`) records every key it has seen as its high-water mark,
//! so after such a swap the mark is 262,145. At the end of every write
//! transaction the pager truncates the cache to the database size; while the
//! database is smaller than 1 GiB that mark lies far beyond it and `pcache1`
//! walks its whole hash table (16,384 slots with the default 64 MiB cache)
//! to find pages that cannot be there. Under `perf` that walk was 8-10 % of
//! the writer's time in `benches/writer.rs`.
//!
//! This wrapper delegates every call to the default cache and keeps its own
//! high-water mark that leaves the temporary key out. It skips a truncation
//! only when no page at or above the limit can exist; every other truncation
//! (a rolled-back transaction that grew the file) goes through unchanged.
//!
//! Installing needs `sqlite3_config`, which SQLite accepts only before it is
//! initialized, i.e. before the process opens its first connection. When it
//! is too late, SQLite keeps its default cache: correct, just slower.
//! `sqlite3_config` is not thread-safe either: the store installs the
//! wrapper on the thread that opens the process's first connection, before
//! anything else uses SQLite.

use std::os::raw::{c_int, c_uint, c_void};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use rusqlite::ffi;

/// SQLite's `PENDING_BYTE`: the lock-byte page starts here.
const PENDING_BYTE: c_uint = 0x4000_0000;

/// The default cache's methods, copied before ours replaced them.
struct DefaultMethods(ffi::sqlite3_pcache_methods2);

// SAFETY: a table of C function pointers plus `pArg`, which SQLite's own
// default cache ignores; SQLite calls these from any thread itself.
unsafe impl Send for DefaultMethods {}
unsafe impl Sync for DefaultMethods {}

static DEFAULT: OnceLock<DefaultMethods> = OnceLock::new();
static INSTALLED: OnceLock<bool> = OnceLock::new();

static SKIPPED: AtomicU64 = AtomicU64::new(0);
static PASSED: AtomicU64 = AtomicU64::new(0);

/// How many cache truncations were skipped (nothing to drop) and how many
/// went through to the default cache, since the process started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TruncateCounts {
    pub skipped: u64,
    pub passed: u64,
}

pub fn truncate_counts() -> TruncateCounts {
    TruncateCounts {
        skipped: SKIPPED.load(Ordering::Relaxed),
        passed: PASSED.load(Ordering::Relaxed),
    }
}

/// Installs the wrapper once per process; true when it is in use. Call it
/// before the first SQLite connection is opened.
pub fn install() -> bool {
    *INSTALLED.get_or_init(|| {
        // SAFETY: both calls follow sqlite3_config's contract: GETPCACHE2
        // fills the struct we pass, PCACHE2 copies the struct we pass.
        // Either fails with SQLITE_MISUSE once SQLite is initialized, and
        // then nothing has changed.
        unsafe {
            let mut default = std::mem::MaybeUninit::<ffi::sqlite3_pcache_methods2>::zeroed();
            if ffi::sqlite3_config(ffi::SQLITE_CONFIG_GETPCACHE2, default.as_mut_ptr())
                != ffi::SQLITE_OK
            {
                return false;
            }
            let default = default.assume_init();
            if default.xCreate.is_none() || default.xTruncate.is_none() {
                return false;
            }
            let default = &DEFAULT.get_or_init(|| DefaultMethods(default)).0;
            let ours = ffi::sqlite3_pcache_methods2 {
                iVersion: 1,
                pArg: default.pArg,
                xInit: Some(init),
                xShutdown: Some(shutdown),
                xCreate: Some(create),
                xCachesize: Some(cache_size),
                xPagecount: Some(page_count),
                xFetch: Some(fetch),
                xUnpin: Some(unpin),
                xRekey: Some(rekey),
                xTruncate: Some(truncate),
                xDestroy: Some(destroy),
                xShrink: Some(shrink),
            };
            ffi::sqlite3_config(
                ffi::SQLITE_CONFIG_PCACHE2,
                &ours as *const ffi::sqlite3_pcache_methods2,
            ) == ffi::SQLITE_OK
        }
    })
}

/// One cache: the default cache's handle and our high-water mark.
struct Wrapped {
    inner: *mut ffi::sqlite3_pcache,
    /// No page with a larger key is in the cache (the swap key aside).
    max_key: c_uint,
    /// The lock-byte page: only ever a key in passing, inside one rebalance.
    swap_key: c_uint,
}

/// The default cache's methods; always set once ours are installed.
fn methods() -> Option<&'static ffi::sqlite3_pcache_methods2> {
    DEFAULT.get().map(|default| &default.0)
}

/// # Safety
/// `cache` is a pointer `create` returned and `destroy` has not freed.
unsafe fn wrapped<'a>(cache: *mut ffi::sqlite3_pcache) -> &'a mut Wrapped {
    &mut *cache.cast::<Wrapped>()
}

unsafe extern "C" fn init(arg: *mut c_void) -> c_int {
    match methods().and_then(|m| m.xInit) {
        Some(f) => f(arg),
        None => ffi::SQLITE_OK,
    }
}

unsafe extern "C" fn shutdown(arg: *mut c_void) {
    if let Some(f) = methods().and_then(|m| m.xShutdown) {
        f(arg);
    }
}

unsafe extern "C" fn create(
    page_size: c_int,
    extra: c_int,
    purgeable: c_int,
) -> *mut ffi::sqlite3_pcache {
    let Some(f) = methods().and_then(|m| m.xCreate) else {
        return std::ptr::null_mut();
    };
    let inner = f(page_size, extra, purgeable);
    if inner.is_null() {
        return inner;
    }
    let page_size = c_uint::try_from(page_size).unwrap_or(1).max(1);
    Box::into_raw(Box::new(Wrapped {
        inner,
        max_key: 0,
        swap_key: PENDING_BYTE / page_size + 1,
    }))
    .cast()
}

unsafe extern "C" fn cache_size(cache: *mut ffi::sqlite3_pcache, pages: c_int) {
    if let Some(f) = methods().and_then(|m| m.xCachesize) {
        f(wrapped(cache).inner, pages);
    }
}

unsafe extern "C" fn page_count(cache: *mut ffi::sqlite3_pcache) -> c_int {
    match methods().and_then(|m| m.xPagecount) {
        Some(f) => f(wrapped(cache).inner),
        None => 0,
    }
}

unsafe extern "C" fn fetch(
    cache: *mut ffi::sqlite3_pcache,
    key: c_uint,
    create: c_int,
) -> *mut ffi::sqlite3_pcache_page {
    let Some(f) = methods().and_then(|m| m.xFetch) else {
        return std::ptr::null_mut();
    };
    let cache = wrapped(cache);
    let page = f(cache.inner, key, create);
    // Any key that may now be cached counts, the swap key included (the
    // pager fetches and drops it when asked for it by mistake).
    if !page.is_null() && create != 0 {
        cache.max_key = cache.max_key.max(key);
    }
    page
}

unsafe extern "C" fn unpin(
    cache: *mut ffi::sqlite3_pcache,
    page: *mut ffi::sqlite3_pcache_page,
    discard: c_int,
) {
    if let Some(f) = methods().and_then(|m| m.xUnpin) {
        f(wrapped(cache).inner, page, discard);
    }
}

unsafe extern "C" fn rekey(
    cache: *mut ffi::sqlite3_pcache,
    page: *mut ffi::sqlite3_pcache_page,
    old_key: c_uint,
    new_key: c_uint,
) {
    let Some(f) = methods().and_then(|m| m.xRekey) else {
        return;
    };
    let cache = wrapped(cache);
    f(cache.inner, page, old_key, new_key);
    // The swap key is moved off again before `balance_nonroot` returns, with
    // no other cache call in between, so it is never cached at a truncation.
    if new_key != cache.swap_key {
        cache.max_key = cache.max_key.max(new_key);
    }
}

unsafe extern "C" fn truncate(cache: *mut ffi::sqlite3_pcache, limit: c_uint) {
    let Some(f) = methods().and_then(|m| m.xTruncate) else {
        return;
    };
    let cache = wrapped(cache);
    if limit > cache.max_key {
        SKIPPED.fetch_add(1, Ordering::Relaxed);
        return;
    }
    PASSED.fetch_add(1, Ordering::Relaxed);
    f(cache.inner, limit);
    cache.max_key = limit.saturating_sub(1);
}

unsafe extern "C" fn destroy(cache: *mut ffi::sqlite3_pcache) {
    let cache = Box::from_raw(cache.cast::<Wrapped>());
    if let Some(f) = methods().and_then(|m| m.xDestroy) {
        f(cache.inner);
    }
}

unsafe extern "C" fn shrink(cache: *mut ffi::sqlite3_pcache) {
    if let Some(f) = methods().and_then(|m| m.xShrink) {
        f(wrapped(cache).inner);
    }
}
