//! Request ids: the client's `X-Request-Id` when it is sane, otherwise a fresh UUID-shaped one.

use std::cell::Cell;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

use http::{HeaderMap, HeaderName, HeaderValue};

/// `x-request-id`: read from the client, sent to the backend and echoed on the response.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The longest client-supplied id kept; longer ones are replaced, not truncated.
pub const MAX_CLIENT_ID_BYTES: usize = 128;

/// The id for this request: the first `X-Request-Id` when it holds 1 to 128 visible ASCII
/// characters, else a new random UUIDv4-shaped id (122 random bits, no syscall per call).
pub fn request_id(headers: &HeaderMap) -> HeaderValue {
    match headers.get(X_REQUEST_ID) {
        Some(id) if is_sane(id) => id.clone(),
        _ => new_id(),
    }
}

/// Whether a client's id can be passed on and logged as it is.
fn is_sane(id: &HeaderValue) -> bool {
    let bytes = id.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_CLIENT_ID_BYTES
        && bytes.iter().all(|b| b.is_ascii_graphic())
}

/// A fresh id such as `0b6e3c1a-93d2-4f0e-8a4b-5c2d1e7f9a03`.
pub fn new_id() -> HeaderValue {
    let (unique, random) = next_random();
    format_id(unique, random)
}

/// Lays two random halves out as a UUIDv4 string.
fn format_id(unique: u64, random: u64) -> HeaderValue {
    // A UUID has 122 free bits around the version (bits 76..80, value 4) and the variant (bits
    // 62..64, value 0b10). All 64 bits of `unique` are kept, so ids within a thread never repeat:
    // its top 60 fill the bits above the variant, its low 4 and 58 bits of `random` the rest.
    let above = u128::from(unique >> 4);
    let below = (u128::from(unique & 0xf) << 58) | u128::from(random >> 6);
    let bits = ((above >> 12) << 80) | (0x4 << 76) | ((above & 0xfff) << 64) | (0b10 << 62) | below;
    let mut text = [0u8; 36];
    let mut at = 0;
    for (i, byte) in bits.to_be_bytes().iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            text[at] = b'-';
            at += 1;
        }
        text[at] = HEX[usize::from(byte >> 4)];
        text[at + 1] = HEX[usize::from(byte & 0xf)];
        at += 2;
    }
    HeaderValue::from_bytes(&text).unwrap_or_else(|_| {
        // Hex digits and dashes are always a valid header value.
        HeaderValue::from_static("00000000-0000-4000-8000-000000000000")
    })
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Two odd increments walk every 64-bit state before repeating; mixing each through a bijection
/// gives a first half unique within a thread, and the random per-thread seeds make two threads or
/// two runs collide only when both halves do.
const STEP_HIGH: u64 = 0x9e37_79b9_7f4a_7c15;
const STEP_LOW: u64 = 0xd1b5_4a32_d192_ed03;

thread_local! {
    static STATE: Cell<(u64, u64)> = Cell::new(seed());
}

fn next_random() -> (u64, u64) {
    STATE.with(|state| {
        let (high, low) = state.get();
        let next = (high.wrapping_add(STEP_HIGH), low.wrapping_add(STEP_LOW));
        state.set(next);
        (mix(next.0), mix(next.1))
    })
}

/// The splitmix64 finalizer: a bijection on u64 that spreads every input bit over the output.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Per-thread seeds from std's randomly keyed hasher (OS randomness, read once per thread),
/// with a process-wide counter so two threads never hash the same input.
fn seed() -> (u64, u64) {
    static THREADS: AtomicU64 = AtomicU64::new(0);
    let n = THREADS.fetch_add(1, Ordering::Relaxed);
    let keyed = RandomState::new();
    let half = |salt: u64| {
        let mut h = keyed.build_hasher();
        h.write_u64(n);
        h.write_u64(salt);
        h.finish()
    };
    (half(0), half(1))
}

#[cfg(test)]
mod tests {
    // Unwraps here are assertions on test data: a failure fails the test.
    use std::collections::HashSet;

    use super::*;

    fn with_id(value: &[u8]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(X_REQUEST_ID, HeaderValue::from_bytes(value).unwrap());
        headers
    }

    fn is_uuid_v4(id: &HeaderValue) -> bool {
        let s = id.to_str().unwrap();
        let parts: Vec<&str> = s.split('-').collect();
        s.len() == 36
            && parts.iter().map(|p| p.len()).collect::<Vec<_>>() == [8, 4, 4, 4, 12]
            && parts.iter().all(|p| {
                p.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            })
            && parts[2].starts_with('4')
            && matches!(parts[3].as_bytes()[0], b'8' | b'9' | b'a' | b'b')
    }

    #[test]
    fn keeps_a_sane_client_id() {
        for id in [
            &b"abc"[..],
            b"0b6e3c1a-93d2-4f0e-8a4b-5c2d1e7f9a03",
            b"!~{}[]/:@",
            &[b'x'; MAX_CLIENT_ID_BYTES],
        ] {
            assert_eq!(request_id(&with_id(id)).as_bytes(), id);
        }
    }

    #[test]
    fn replaces_a_client_id_that_is_not_sane() {
        for id in [
            &b""[..],
            b"has space",
            b"tab\there",
            b"caf\xc3\xa9",
            &[b'x'; MAX_CLIENT_ID_BYTES + 1],
        ] {
            let got = request_id(&with_id(id));
            assert_ne!(got.as_bytes(), id);
            assert!(is_uuid_v4(&got), "{got:?}");
        }
    }

    #[test]
    fn first_of_several_headers_decides() {
        let mut headers = with_id(b"first");
        headers.append(X_REQUEST_ID, HeaderValue::from_static("second"));
        assert_eq!(request_id(&headers), "first");
    }

    #[test]
    fn generates_distinct_uuid_shaped_ids() {
        let ids: HashSet<HeaderValue> =
            (0..10_000).map(|_| request_id(&HeaderMap::new())).collect();
        assert_eq!(ids.len(), 10_000);
        assert!(ids.iter().all(is_uuid_v4));
    }

    #[test]
    fn layout_keeps_every_bit_of_the_unique_half() {
        let (unique, _) = next_random();
        let id = format_id(unique, 0);
        let hex: String = id.to_str().unwrap().chars().filter(|c| *c != '-').collect();
        let bits = u128::from_str_radix(&hex, 16).unwrap();
        let above = ((bits >> 80) << 12) | ((bits >> 64) & 0xfff);
        let below = (bits >> 58) & 0xf;
        assert_eq!(((above as u64) << 4) | below as u64, unique);
        assert!(is_uuid_v4(&id));
    }

    #[test]
    fn threads_do_not_share_a_sequence() {
        let run = || (0..1_000).map(|_| new_id()).collect::<Vec<_>>();
        let a = std::thread::spawn(run).join().unwrap();
        let b = std::thread::spawn(run).join().unwrap();
        let all: HashSet<&HeaderValue> = a.iter().chain(&b).collect();
        assert_eq!(all.len(), 2_000);
    }
}
