//! Units a person reads or types: ages (`7d`, `12h`) parsed from flags and printed in
//! reports, and sizes printed in binary units. Leaf module: it depends on nothing in
//! the crate, so the command line, the audit and `check` can all use it.

use std::time::Duration;

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DurationError {
    #[error(
        "{0:?} is not a duration: give a number and a unit s, m, h or d, such as 7d, 12h or 30m"
    )]
    Invalid(String),
    #[error("{0:?} is too long a duration")]
    Overflow(String),
}

/// Parses `30s`, `30m`, `12h` or `7d`. The unit is required, so a bare `7` is never
/// taken for seven seconds.
pub fn parse_age(raw: &str) -> Result<Duration, DurationError> {
    let invalid = || DurationError::Invalid(raw.to_string());
    let s = raw.trim();
    let split = s.len().checked_sub(1).ok_or_else(invalid)?;
    let (digits, unit) = (s.get(..split).ok_or_else(invalid)?, s.get(split..));
    let per_unit: u64 = match unit {
        Some("s") => 1,
        Some("m") => 60,
        Some("h") => 3600,
        Some("d") => 86400,
        _ => return Err(invalid()),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    let n: u64 = digits
        .parse()
        .map_err(|_| DurationError::Overflow(raw.to_string()))?;
    n.checked_mul(per_unit)
        .map(Duration::from_secs)
        .ok_or_else(|| DurationError::Overflow(raw.to_string()))
}

/// `9d 3h`, `2h 5m`, `45s`: the two largest units, for people.
pub fn human_age(seconds: u64) -> String {
    let units = [(86400, "d"), (3600, "h"), (60, "m"), (1, "s")];
    let mut parts = Vec::new();
    let mut rest = seconds;
    for (size, unit) in units {
        if rest >= size || (parts.is_empty() && size == 1) {
            parts.push(format!("{}{unit}", rest / size));
            rest %= size;
        } else if !parts.is_empty() {
            // Keep the second unit adjacent to the first: `1d 0h`, never `1d 5m`.
            parts.push(format!("0{unit}"));
        }
        if parts.len() == 2 {
            break;
        }
    }
    parts.join(" ")
}

/// `1.5 GiB`: one decimal, binary units, for free-space reports.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    format!("{v:.1} {}", UNITS[i])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_parse_with_a_unit_and_nothing_else() {
        assert_eq!(parse_age("7d"), Ok(Duration::from_secs(7 * 86400)));
        assert_eq!(parse_age("12h"), Ok(Duration::from_secs(12 * 3600)));
        assert_eq!(parse_age("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_age("45s"), Ok(Duration::from_secs(45)));
        assert_eq!(parse_age(" 0d "), Ok(Duration::ZERO));
        for bad in [
            "", "7", "d", "7w", "-7d", "+7d", "7 d", "1.5d", "7dd", "७d", "7é",
        ] {
            assert!(
                matches!(parse_age(bad), Err(DurationError::Invalid(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(
            parse_age("99999999999999999999d"),
            Err(DurationError::Overflow(_))
        ));
        assert!(matches!(
            parse_age("999999999999999999d"),
            Err(DurationError::Overflow(_))
        ));
        assert_eq!(human_age(0), "0s");
        assert_eq!(human_age(45), "45s");
        assert_eq!(human_age(3600 + 5 * 60), "1h 5m");
        assert_eq!(human_age(9 * 86400 + 3 * 3600 + 59), "9d 3h");
        assert_eq!(human_age(86400 + 5 * 60), "1d 0h");
    }

    #[test]
    fn sizes_in_binary_units() {
        assert_eq!(human_size(0), "0.0 B");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(3 << 30), "3.0 GiB");
        assert_eq!(human_size(u64::MAX), "16777216.0 TiB");
    }
}
