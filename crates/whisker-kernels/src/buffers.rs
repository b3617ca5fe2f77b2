//! A process-wide cache of `f32` buffers for the large, short-lived arrays of training and
//! input-gradient steps (a forward tape's values, gradients, weight-gradient scratch).
//!
//! Every step needs the same buffers as the one before; taking them from here instead of
//! allocating them avoids mapping and zeroing fresh pages each step (on the 2-core machines
//! measured, first-touch page faults cost a weight-gradient call 3× its compute). The cache
//! holds at most [`MAX_BYTES`] in at most [`MAX_BUFFERS`] buffers; [`release`] empties it.

use std::sync::Mutex;

/// The most bytes the cache keeps.
pub const MAX_BYTES: usize = 8 << 30;
/// The most buffers the cache keeps.
pub const MAX_BUFFERS: usize = 1024;

struct Cache {
    bufs: Vec<Vec<f32>>,
    bytes: usize,
}

static CACHE: Mutex<Cache> = Mutex::new(Cache {
    bufs: Vec::new(),
    bytes: 0,
});

fn cache() -> std::sync::MutexGuard<'static, Cache> {
    CACHE.lock().unwrap_or_else(|e| e.into_inner())
}

/// A buffer of `len` values whose contents are unspecified (earlier values): for callers
/// that overwrite it whole. The smallest cached buffer that holds `len` without being more
/// than twice its size, else a new one (a small request must not take, and keep, a large
/// buffer: the next large request would then map a fresh one, and the cache grow).
pub fn take(len: usize) -> Vec<f32> {
    let found = {
        let mut c = cache();
        let most = len.saturating_mul(2).max(len + 256);
        let best = c
            .bufs
            .iter()
            .enumerate()
            .filter(|(_, b)| (len..=most).contains(&b.capacity()))
            .min_by_key(|(_, b)| b.capacity())
            .map(|(i, _)| i);
        best.map(|i| {
            let b = c.bufs.swap_remove(i);
            c.bytes -= b.capacity() * 4;
            b
        })
    };
    match found {
        Some(mut b) => {
            // old values stay where they are; only a grown tail is written
            b.truncate(len);
            b.resize(len, 0.0);
            b
        }
        None => vec![0f32; len],
    }
}

/// A buffer of `len` zeros.
pub fn take_zeroed(len: usize) -> Vec<f32> {
    let mut b = take(len);
    b.fill(0.0);
    b
}

/// Return a buffer for later [`take`]s (dropped when the cache is full).
pub fn give(b: Vec<f32>) {
    let bytes = b.capacity() * 4;
    if bytes == 0 {
        return;
    }
    let mut c = cache();
    if c.bufs.len() < MAX_BUFFERS && c.bytes + bytes <= MAX_BYTES {
        c.bytes += bytes;
        c.bufs.push(b);
    }
}

/// Free every cached buffer (after training, say, when the memory is wanted elsewhere).
pub fn release() {
    let bufs = {
        let mut c = cache();
        c.bytes = 0;
        std::mem::take(&mut c.bufs)
    };
    drop(bufs);
}

/// The bytes the cache holds now.
pub fn cached_bytes() -> usize {
    cache().bytes
}
