//! Times as our files record them: RFC 3339 in UTC to the second (`2025-01-31T12:00:00Z`), in
//! checkpoint manifests and provenance records.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// 9999-12-31T23:59:59Z: humantime formats nothing later (nor anything before 1970).
const LAST_SECOND: u64 = 253_402_300_799;

/// `t` as RFC 3339 UTC to the second; a time outside 1970..=9999 prints as the nearer end.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let t = UNIX_EPOCH + Duration::from_secs(secs.min(LAST_SECOND));
    humantime::format_rfc3339_seconds(t).to_string()
}

/// The time a written file records: the clock, or `SOURCE_DATE_EPOCH` (seconds since 1970) when
/// it is set and parses, for reproducible files.
pub(crate) fn source_date() -> SystemTime {
    std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .and_then(|secs| UNIX_EPOCH.checked_add(Duration::from_secs(secs)))
        .unwrap_or_else(SystemTime::now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_of_known_instants() {
        let at = |s| rfc3339(UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(at(1_738_324_799), "2025-01-31T11:59:59Z");
        assert_eq!(at(4_102_444_800), "2100-01-01T00:00:00Z");
        assert_eq!(at(4_107_542_399), "2100-02-28T23:59:59Z");
        assert_eq!(at(4_107_542_400), "2100-03-01T00:00:00Z");
        // Outside humantime's range: the nearer end, no panic.
        assert_eq!(
            rfc3339(UNIX_EPOCH - Duration::from_secs(1)),
            "1970-01-01T00:00:00Z"
        );
        assert_eq!(at(LAST_SECOND + 1), "9999-12-31T23:59:59Z");
        assert_eq!(at(u64::MAX / 4), "9999-12-31T23:59:59Z");
    }
}
