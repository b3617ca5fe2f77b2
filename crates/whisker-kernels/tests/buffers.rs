//! The process-wide buffer cache (its own test binary: nothing else touches the cache here).

use whisker_kernels::buffers;

#[test]
fn buffers_are_reused_bounded_and_released() {
    buffers::release();
    assert_eq!(buffers::cached_bytes(), 0);
    // a new buffer is zeros; a returned one comes back for a request it holds
    let a = buffers::take(1000);
    assert!(a.iter().all(|&v| v == 0.0));
    let mut a = a;
    a.fill(7.0);
    let ptr = a.as_ptr();
    buffers::give(a);
    assert_eq!(buffers::cached_bytes(), 4000);
    let b = buffers::take(600);
    assert_eq!(b.as_ptr(), ptr, "the cached buffer is reused");
    assert_eq!(b.len(), 600);
    assert_eq!(buffers::cached_bytes(), 0);
    // `take` leaves old values, `take_zeroed` does not
    assert!(b.iter().all(|&v| v == 7.0));
    buffers::give(b);
    let z = buffers::take_zeroed(800);
    assert_eq!(z.as_ptr(), ptr);
    assert!(z.iter().all(|&v| v == 0.0));
    // growing past the capacity: the tail is zeros
    let mut z = z;
    z.fill(1.0);
    buffers::give(z);
    let g = buffers::take(1000);
    assert_eq!(&g[..800], &[1.0; 800][..]);
    buffers::give(g);
    // the smallest buffer that fits is chosen
    let big = buffers::take(5000);
    let big_ptr = big.as_ptr();
    buffers::give(big);
    let small = buffers::take(900);
    assert_eq!(small.as_ptr(), ptr);
    let large = buffers::take(4000);
    assert_eq!(large.as_ptr(), big_ptr);
    buffers::give(small);
    buffers::give(large);
    // but not one more than twice the size asked for: that stays for a large request
    let tiny = buffers::take(100);
    assert!(tiny.as_ptr() != ptr && tiny.as_ptr() != big_ptr);
    let again = buffers::take(4500);
    assert_eq!(again.as_ptr(), big_ptr);
    drop((tiny, again));
    // bounded in count
    let many: Vec<Vec<f32>> = (0..buffers::MAX_BUFFERS + 10)
        .map(|_| vec![0f32; 4])
        .collect();
    for b in many {
        buffers::give(b);
    }
    buffers::release();
    assert_eq!(buffers::cached_bytes(), 0);
    for _ in 0..buffers::MAX_BUFFERS + 10 {
        buffers::give(vec![0f32; 4]);
    }
    assert_eq!(buffers::cached_bytes(), buffers::MAX_BUFFERS * 16);
    buffers::release();
    assert_eq!(buffers::cached_bytes(), 0);
}
