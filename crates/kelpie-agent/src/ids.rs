//! Letta-style ids (`agent-<uuid v4>`) drawn from the environment's RNG, and
//! the two timestamp formats Letta's wire format uses.

use kelpie_core::RngSource;

/// A new id `<prefix>-<uuid v4>`.
pub fn new_id(prefix: &str, rng: &dyn RngSource) -> String {
    uuid_id(prefix, rng.next_u64(), rng.next_u64())
}

/// The last 16 bits of a run's uuid: a hash of its other bits, so a step's
/// id can say which run and step it is (see [`step_id`]).
fn run_tag(high: u64, low: u64) -> u64 {
    let mut bytes = [0u8; 14];
    bytes[..8].copy_from_slice(&high.to_be_bytes());
    bytes[8..].copy_from_slice(&low.to_be_bytes()[..6]);
    fnv1a(&bytes, 0xcbf2_9ce4_8422_2325) & 0xffff
}

/// A new run id `run-<uuid v4>` whose last 16 bits are a hash of the
/// rest ([`run_tag`]): 106 random bits.
pub fn new_run_id(rng: &dyn RngSource) -> String {
    let (high, low) = uuid_bits(rng.next_u64(), rng.next_u64());
    uuid_id("run", high, (low & !0xffff) | run_tag(high, low))
}

/// The id of step `index` (from 0) of run `run_id`: the run's uuid with
/// its last 16 bits XORed with `index + 1`, so [`run_of_step`] finds the
/// run from the step id alone, without an index of steps.
pub fn step_id(run_id: &str, index: usize) -> String {
    assert!(index < 0xffff, "a step index fits 16 bits");
    match parse_uuid(uuid_part(run_id)) {
        Some((high, low)) => uuid_id("step", high, low ^ (index as u64 + 1)),
        // Not a uuid: a run id Kelpie did not make; its steps still need ids.
        None => format!("step-{}-{index}", uuid_part(run_id)),
    }
}

/// The run (id, step index) that [`step_id`] made `step_id` for, if the
/// index is below `steps_count_max`; `None` for an id it cannot have made.
/// Runs stored before run ids carried their tag have random step ids; such
/// an id names a run only by chance (then one that does not exist).
pub fn run_of_step(step_id: &str, steps_count_max: usize) -> Option<(String, usize)> {
    let uuid = step_id.strip_prefix("step-")?;
    let (high, low) = parse_uuid(uuid)?;
    let tag = run_tag(high, low);
    let index = ((low & 0xffff) ^ tag).checked_sub(1)?;
    let index = usize::try_from(index).ok().filter(|index| *index < steps_count_max)?;
    Some((uuid_id("run", high, (low & !0xffff) | tag), index))
}

/// A new message id `message-<uuid>` for a message of `agent_id`: the
/// first 64 bits of the agent's uuid, then 62 random bits, so
/// [`message_agent_prefix`] finds the agent from the message id alone
/// (`GET /v1/messages/{id}`), without an index written by every step. An
/// agent id that is not a uuid gets a wholly random message id.
pub fn new_message_id(agent_id: &str, rng: &dyn RngSource) -> String {
    match parse_uuid(uuid_part(agent_id)) {
        Some((agent_high, _)) if agent_id.starts_with("agent-") => {
            uuid_id("message", agent_high, rng.next_u64())
        }
        _ => new_id("message", rng),
    }
}

/// The start (`agent-<first 64 bits>-`) every agent id has whose messages
/// [`new_message_id`] could have named `message_id`; `None` for an id that
/// is not a uuid.
pub fn message_agent_prefix(message_id: &str) -> Option<String> {
    let uuid = message_id.strip_prefix("message-")?;
    parse_uuid(uuid)?;
    Some(format!("agent-{}-", &uuid[..18]))
}

/// A new conversation id `conv-<uuid>` for a conversation of `agent_id`:
/// the first 64 bits of the agent's uuid, then random bits, so
/// [`conversation_agent_prefix`] finds the agent from the id alone. An
/// agent id that is not a uuid gets a wholly random conversation id.
pub fn new_conversation_id(agent_id: &str, rng: &dyn RngSource) -> String {
    match parse_uuid(uuid_part(agent_id)) {
        Some((agent_high, _)) if agent_id.starts_with("agent-") => {
            uuid_id("conv", agent_high, rng.next_u64())
        }
        _ => new_id("conv", rng),
    }
}

/// The start (`agent-<first 64 bits>-`) of every agent id whose
/// conversations [`new_conversation_id`] could have named
/// `conversation_id`; `None` for an id that is not `conv-<uuid>`.
pub fn conversation_agent_prefix(conversation_id: &str) -> Option<String> {
    let uuid = conversation_id.strip_prefix("conv-")?;
    parse_uuid(uuid)?;
    Some(format!("agent-{}-", &uuid[..18]))
}

/// The two halves of a canonical lowercase uuid, `None` for anything else.
fn parse_uuid(uuid: &str) -> Option<(u64, u64)> {
    let bytes = uuid.as_bytes();
    let dashes_ok = bytes.len() == 36 && [8, 13, 18, 23].iter().all(|&at| bytes[at] == b'-');
    if !dashes_ok {
        return None;
    }
    let hex: String = uuid.chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return None;
    }
    Some((u64::from_str_radix(&hex[..16], 16).ok()?, u64::from_str_radix(&hex[16..], 16).ok()?))
}

/// Version 4 and the RFC 4122 variant bits, as a uuid v4 has them.
fn uuid_bits(high: u64, low: u64) -> (u64, u64) {
    (
        (high & 0xffff_ffff_ffff_0fff) | 0x0000_0000_0000_4000,
        (low & 0x3fff_ffff_ffff_ffff) | 0x8000_0000_0000_0000,
    )
}

fn uuid_id(prefix: &str, high: u64, low: u64) -> String {
    let (high, low) = uuid_bits(high, low);
    format!(
        "{prefix}-{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        high >> 32,
        (high >> 16) & 0xffff,
        high & 0xffff,
        low >> 48,
        low & 0xffff_ffff_ffff
    )
}

/// An id of Letta's uuid4 shape that `name` always gets, for things that
/// exist by configuration rather than by a create (base providers).
pub fn name_id(prefix: &str, name: &str) -> String {
    let bytes = name.as_bytes();
    uuid_id(prefix, fnv1a(bytes, 0xcbf2_9ce4_8422_2325), fnv1a(bytes, 0x6c62_272e_07bb_0142))
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

/// Days since 1970-01-01 of a (proleptic Gregorian) date.
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let mp = i64::from((month + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Milliseconds since the Unix epoch of an ISO 8601 date or date-time as
/// Letta's filters take them: `2025-01-29`, `2025-01-29T15:01:19`,
/// with fractional seconds, and `Z` or a `±HH:MM` offset (none is UTC);
/// `None` for anything else or a time before 1970.
pub fn parse_iso_ms(text: &str) -> Option<u64> {
    let number = |part: &str| -> Option<u32> {
        (!part.is_empty() && part.bytes().all(|b| b.is_ascii_digit())).then(|| part.parse().ok()).flatten()
    };
    let (date, time) = match text.find(['T', 't', ' ']) {
        Some(at) => (&text[..at], &text[at + 1..]),
        None => (text, ""),
    };
    let mut parts = date.split('-');
    let (year, month, day) = (number(parts.next()?)?, number(parts.next()?)?, number(parts.next()?)?);
    let days_in_month = match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        1..=12 => 31,
        _ => return None,
    };
    if parts.next().is_some() || date.len() != 10 || !(1..=days_in_month).contains(&day) {
        return None;
    }
    let (clock, offset_secs) = match time.find(['Z', 'z', '+', '-']) {
        None => (time, 0i64),
        Some(at) => {
            let zone = &time[at..];
            let offset = match zone {
                "Z" | "z" => 0,
                _ => {
                    let (hours, minutes) = zone[1..].split_once(':').unwrap_or((&zone[1..], "00"));
                    let (hours, minutes) = (number(hours)?, number(minutes)?);
                    if hours > 23 || minutes > 59 {
                        return None;
                    }
                    let secs = i64::from(hours * 3_600 + minutes * 60);
                    if zone.starts_with('-') {
                        -secs
                    } else {
                        secs
                    }
                }
            };
            (&time[..at], offset)
        }
    };
    let mut millis = 0u64;
    let mut secs_of_day = 0i64;
    if !clock.is_empty() {
        let (hms, fraction) = clock.split_once('.').unwrap_or((clock, ""));
        let mut fields = hms.split(':');
        let hour = number(fields.next()?)?;
        let minute = number(fields.next()?)?;
        let second = fields.next().map_or(Some(0), number)?;
        if fields.next().is_some() || hour > 23 || minute > 59 || second > 60 {
            return None;
        }
        if clock.contains('.') {
            number(fraction)?;
            let digits: String = fraction.chars().chain("000".chars()).take(3).collect();
            millis = u64::from(number(&digits)?);
        }
        secs_of_day = i64::from(hour * 3_600 + minute * 60 + second);
    }
    let secs = days_from_civil(i64::from(year), month, day) * 86_400 + secs_of_day - offset_secs;
    u64::try_from(secs).ok().map(|secs| secs * 1_000 + millis)
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
    fn a_step_id_names_its_run_and_index() {
        let rng = ChaChaRngSource::from_seed(11);
        for _ in 0..200 {
            let run = new_run_id(&rng);
            assert_eq!(run.len(), "run-".len() + 36);
            assert_eq!(&uuid_part(&run)[14..15], "4", "{run}");
            for index in [0, 1, 2, 49, 0xfffe] {
                let step = step_id(&run, index);
                assert!(step.starts_with("step-") && step.len() == "step-".len() + 36, "{step}");
                assert_eq!(run_of_step(&step, 0xffff), Some((run.clone(), index)), "{step}");
                assert_eq!(run_of_step(&step, index), None, "an index past the bound");
            }
            assert_ne!(step_id(&run, 0), step_id(&run, 1));
        }
        // Random step ids (runs of the older layout) and other strings name
        // no run, or at most one whose id is not of a stored run.
        let named = (0..10_000).filter(|_| run_of_step(&new_id("step", &rng), 64).is_some()).count();
        assert!(named < 100, "a random id names a run only by chance: {named} of 10 000");
        assert_eq!(run_of_step("step-not-a-uuid", 64), None);
        assert_eq!(run_of_step("message-00000000-0000-4000-8000-000000000000", 64), None);
        assert_eq!(run_of_step("step-00000000-0000-4000-8000-00000000000G", 64), None);
        // A run id Kelpie did not make still gives distinct step ids.
        assert_eq!(step_id("run-x", 3), "step-x-3");
    }

    #[test]
    fn a_message_id_names_the_start_of_its_agent_id() {
        let rng = ChaChaRngSource::from_seed(5);
        for _ in 0..200 {
            let agent = new_id("agent", &rng);
            let message = new_message_id(&agent, &rng);
            assert_eq!(message.len(), "message-".len() + 36, "{message}");
            assert_eq!(&uuid_part(&message)[14..15], "4", "{message}");
            assert!(matches!(&uuid_part(&message)[19..20], "8" | "9" | "a" | "b"), "{message}");
            let prefix = message_agent_prefix(&message).expect("a uuid message id");
            assert!(agent.starts_with(&prefix), "{agent} starts with {prefix}");
            assert_eq!(prefix.len(), "agent-".len() + 19);
            assert_ne!(new_message_id(&agent, &rng), message, "62 random bits per message");
        }
        // An agent id Kelpie did not make still gets message ids.
        let loose = new_message_id("agent-x", &rng);
        assert!(loose.starts_with("message-") && message_agent_prefix(&loose).is_some());
        assert_eq!(message_agent_prefix("message-1"), None);
        assert_eq!(message_agent_prefix("run-00000000-0000-4000-8000-000000000000"), None);
    }

    #[test]
    fn iso_dates_parse_with_their_offsets() {
        let ms = 1_795_634_563_893;
        assert_eq!(parse_iso_ms(&rfc3339_micros(ms)), Some(ms));
        assert_eq!(parse_iso_ms("2026-11-25T19:22:43+00:00"), Some(ms - 893));
        assert_eq!(parse_iso_ms("2026-11-25T11:22:43-08:00"), Some(ms - 893));
        assert_eq!(parse_iso_ms("2026-11-25T20:52:43.893+01:30"), Some(ms));
        assert_eq!(parse_iso_ms("2026-11-25"), Some(ms - (19 * 3_600 + 22 * 60 + 43) * 1_000 - 893));
        assert_eq!(parse_iso_ms("2000-02-29T00:00:00Z"), Some(951_782_400_000));
        assert_eq!(parse_iso_ms("1970-01-01T00:00"), Some(0));
        for bad in [
            "",
            "yesterday",
            "2026-13-01",
            "2026-02-29",
            "2026-11-25T25:00:00",
            "2026-11-25T10:00:00+25:00",
            "1969-12-31T23:59:59Z",
            "2026-11-25T10:00:00.x",
            "2026-1-25",
            "2026-11-25T10",
        ] {
            assert_eq!(parse_iso_ms(bad), None, "{bad:?}");
        }
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
