//! Letta-style ids (`agent-<uuid v4>`) drawn from the environment's RNG, and
//! the two timestamp formats Letta's wire format uses.

use kelpie_core::RngSource;

/// A new id `<prefix>-<uuid v4>`.
pub fn new_id(prefix: &str, rng: &dyn RngSource) -> String {
    uuid_id(prefix, rng.next_u64(), rng.next_u64())
}

fn uuid_id(prefix: &str, high: u64, low: u64) -> String {
    // Version 4 and the RFC 4122 variant bits, as a uuid v4 has them.
    let high = (high & 0xffff_ffff_ffff_0fff) | 0x0000_0000_0000_4000;
    let low = (low & 0x3fff_ffff_ffff_ffff) | 0x8000_0000_0000_0000;
    format!(
        "{prefix}-{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        high >> 32,
        (high >> 16) & 0xffff,
        high & 0xffff,
        low >> 48,
        low & 0xffff_ffff_ffff
    )
}

/// FNV-1a over `bytes` from `offset`.
fn fnv1a(bytes: &[u8], offset: u64) -> u64 {
    bytes.iter().fold(offset, |hash, byte| (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3))
}

/// A uuid-v4-shaped id `<prefix>-<uuid>` that depends only on `key`, the
/// same on every server and release: two requests with one idempotency
/// key name one actor.
pub fn id_from_key(prefix: &str, key: &str) -> String {
    let bytes = key.as_bytes();
    uuid_id(prefix, fnv1a(bytes, 0xcbf2_9ce4_8422_2325), fnv1a(bytes, 0x6c62_272e_07bb_0142))
}

/// The uuid part of an id (`otid` in Letta's messages).
pub fn uuid_part(id: &str) -> &str {
    id.split_once('-').map_or(id, |(_, rest)| rest)
}

/// (year, month, day) of a day count since 1970-01-01 (proleptic Gregorian).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn split(ms: u64) -> (i64, u32, u32, u64, u64) {
    let secs = ms / 1_000;
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    (year, month, day, secs % 86_400, ms % 1_000)
}

/// `2026-11-25T19:22:43.893000Z` (Letta's `created_at`).
pub fn rfc3339_micros(ms: u64) -> String {
    let (year, month, day, secs, millis) = split(ms);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}000Z",
        secs / 3_600,
        secs / 60 % 60,
        secs % 60,
        millis
    )
}

/// `2026-11-25T19:22:44+00:00` (Letta's message `date`).
pub fn rfc3339_seconds(ms: u64) -> String {
    let (year, month, day, secs, _) = split(ms);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}+00:00", secs / 3_600, secs / 60 % 60, secs % 60)
}

/// FNV-1a (64 bits) of `text`: a hash every server and release agrees on,
/// for placing keys in fixed shards.
pub fn fnv1a_64(text: &str) -> u64 {
    text.bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kelpie_core::env::ChaChaRngSource;

    #[test]
    fn ids_look_like_uuid_v4_and_are_seeded() {
        let a = new_id("agent", &ChaChaRngSource::from_seed(7));
        let b = new_id("agent", &ChaChaRngSource::from_seed(7));
        assert_eq!(a, b);
        assert_eq!(a.len(), "agent-".len() + 36);
        let uuid = uuid_part(&a);
        assert_eq!(&uuid[14..15], "4");
        assert!(matches!(&uuid[19..20], "8" | "9" | "a" | "b"), "{uuid}");
    }

    #[test]
    fn timestamps_match_letta_formats() {
        // 2026-11-25T19:22:43.893Z
        let ms = 1_795_634_563_893;
        assert_eq!(rfc3339_micros(ms), "2026-11-25T19:22:43.893000Z");
        assert_eq!(rfc3339_seconds(ms), "2026-11-25T19:22:43+00:00");
        assert_eq!(rfc3339_micros(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(rfc3339_seconds(951_782_400_000), "2000-02-29T00:00:00+00:00");
    }
}
