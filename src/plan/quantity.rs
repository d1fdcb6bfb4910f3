//! Storage quantities as the API server writes them (`1Gi`, `1500M`, `1e9`, `0.5Ti`),
//! compared exactly: expansion decides "bigger or not" on them, and a tenant chooses
//! the claim's. Pure; bounded work whatever the string.

use std::cmp::Ordering;

use thiserror::Error;

/// A size in nanobytes, the API server's own finest precision (it rounds anything finer
/// up to 1n), so two quantities compare as the API server compares them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Size(u128);

/// The largest size compared: about 3.4 * 10^29 bytes. The API server accepts larger
/// (`1e300`); those are refused with an event rather than guessed at.
pub const MAX_BYTES: u128 = u128::MAX / NANO;

const NANO: u128 = 1_000_000_000;

/// Longest quantity read. The API server writes quantities in canonical form, which for
/// any size up to [`MAX_BYTES`] is far shorter; a longer one (a tenant's thousand-digit
/// request) is too large either way, and is not kept or echoed whole.
pub const MAX_LEN: usize = 64;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum QuantityError {
    #[error("{0:?} is not a quantity")]
    Invalid(String),
    #[error("{0:?} is larger than this provisioner accounts for (about 3.4e29 bytes)")]
    TooLarge(String),
    #[error("{0:?} is negative")]
    Negative(String),
}

impl Size {
    pub fn parse(raw: &str) -> Result<Self, QuantityError> {
        parse(raw)
    }

    /// Whole bytes, rounded up.
    pub fn bytes(self) -> u128 {
        self.0.div_ceil(NANO)
    }
}

/// Splits a suffix off: binary (`Ki` .. `Ei`, power of 2^10), decimal SI (`n` .. `E`),
/// or an exponent (`e9`, `E-3`). Returns (number, power of ten, power of 2^10).
fn split_suffix(s: &str) -> Option<(&str, i32, u32)> {
    const BINARY: [(&str, u32); 6] = [
        ("Ki", 1),
        ("Mi", 2),
        ("Gi", 3),
        ("Ti", 4),
        ("Pi", 5),
        ("Ei", 6),
    ];
    for (suffix, p) in BINARY {
        if let Some(n) = s.strip_suffix(suffix) {
            return Some((n, 0, p));
        }
    }
    // An exponent: the first `e`/`E` followed by an optionally signed integer. `E` alone
    // at the end is exa.
    if let Some(at) = s.find(['e', 'E']) {
        let (n, exp) = (&s[..at], &s[at + 1..]);
        if !exp.is_empty() {
            let digits = exp.strip_prefix(['+', '-']).unwrap_or(exp);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            // Anything past +-99 is out of range either way; the cap keeps the work bounded.
            let e: i32 = if digits.len() > 3 {
                999
            } else {
                digits.parse().ok()?
            };
            return Some((n, if exp.starts_with('-') { -e } else { e }, 0));
        }
    }
    const DECIMAL: [(&str, i32); 9] = [
        ("n", -9),
        ("u", -6),
        ("m", -3),
        ("k", 3),
        ("M", 6),
        ("G", 9),
        ("T", 12),
        ("P", 15),
        ("E", 18),
    ];
    for (suffix, p) in DECIMAL {
        if let Some(n) = s.strip_suffix(suffix) {
            return Some((n, p, 0));
        }
    }
    Some((s, 0, 0))
}

fn parse(raw: &str) -> Result<Size, QuantityError> {
    if raw.len() > MAX_LEN {
        let mut shown: String = raw.chars().take(24).collect();
        shown.push_str("...");
        return Err(QuantityError::TooLarge(shown));
    }
    let invalid = || QuantityError::Invalid(raw.to_string());
    let too_large = || QuantityError::TooLarge(raw.to_string());
    let s = raw.trim();
    let (number, ten, kibi) = split_suffix(s).ok_or_else(invalid)?;
    let (negative, number) = match number.as_bytes().first() {
        Some(b'-') => (true, &number[1..]),
        Some(b'+') => (false, &number[1..]),
        _ => (false, number),
    };
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    if int.is_empty() && frac.is_empty()
        || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit())
    {
        return Err(invalid());
    }
    let int = int.trim_start_matches('0');
    let frac = frac.trim_end_matches('0');
    if int.is_empty() && frac.is_empty() {
        return Ok(Size(0));
    }
    if negative {
        return Err(QuantityError::Negative(raw.to_string()));
    }
    // The digits `int frac`, with the point after `int.len() + ten + 9` of them: that
    // many leading digits are whole nanobytes, any nonzero digit after them rounds up.
    let digits: Vec<u8> = int.bytes().chain(frac.bytes()).map(|b| b - b'0').collect();
    let point = i64::try_from(int.len()).map_err(|_| too_large())? + i64::from(ten) + 9;
    // More whole digits than u128 holds is too large, whatever they are.
    if point > 39 {
        return Err(too_large());
    }
    let whole = usize::try_from(point.max(0)).unwrap_or(0);
    let mut nanos: u128 = 0;
    for i in 0..whole {
        let d = digits.get(i).copied().unwrap_or(0);
        nanos = nanos
            .checked_mul(10)
            .and_then(|n| n.checked_add(u128::from(d)))
            .ok_or_else(too_large)?;
    }
    if digits.iter().skip(whole).any(|d| *d != 0) {
        nanos = nanos.checked_add(1).ok_or_else(too_large)?;
    }
    let nanos = nanos
        .checked_mul(1u128 << (10 * kibi))
        .ok_or_else(too_large)?;
    if nanos > MAX_BYTES * NANO {
        return Err(too_large());
    }
    Ok(Size(nanos))
}

/// Compares two quantities; `None` if either does not parse.
pub fn compare(a: &str, b: &str) -> Option<Ordering> {
    Some(Size::parse(a).ok()?.cmp(&Size::parse(b).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_in_every_form_the_api_server_writes() {
        const GI: u128 = 1 << 30;
        for (raw, bytes) in [
            ("1Gi", GI),
            ("1536Mi", 3 * GI / 2),
            ("1.5Gi", 3 * GI / 2),
            ("0.5Ti", 512 * GI),
            ("1G", 1_000_000_000),
            ("1e9", 1_000_000_000),
            ("1E9", 1_000_000_000),
            ("1e+9", 1_000_000_000),
            ("1E", 1_000_000_000_000_000_000),
            ("1Ei", 1 << 60),
            ("9223372036854775807", 9_223_372_036_854_775_807),
            ("8Ei", 1 << 63),
            ("1k", 1000),
            ("1Ki", 1024),
            ("0", 0),
            ("0Gi", 0),
            ("000100", 100),
            ("+5", 5),
            // Fractions of a byte round up, as whole bytes are reported.
            ("1500m", 2),
            ("1n", 1),
            ("1e-30", 1),
            ("12345678901234567890123", 12_345_678_901_234_567_890_123),
            ("1e29", 100_000_000_000_000_000_000_000_000_000),
        ] {
            assert_eq!(Size::parse(raw).map(Size::bytes), Ok(bytes), "{raw}");
        }
    }

    #[test]
    fn exact_where_the_bytes_are_equal() {
        use Ordering::*;
        for (a, b, want) in [
            ("1Gi", "1073741824", Equal),
            ("1Gi", "1G", Greater),
            ("1.5Gi", "1536Mi", Equal),
            ("1500m", "2", Less),
            ("1500m", "1", Greater),
            ("1000000000000000001", "1e18", Greater),
            ("2Gi", "1Ei", Less),
            ("1e9", "1G", Equal),
        ] {
            assert_eq!(compare(a, b), Some(want), "{a} vs {b}");
        }
    }

    #[test]
    fn what_is_refused() {
        for raw in [
            "", "Gi", "1GiB", "1.2.3", "one", "1e", "1e1.5", "0x10", "1 Gi", "--1",
        ] {
            assert!(
                matches!(Size::parse(raw), Err(QuantityError::Invalid(_))),
                "{raw}: {:?}",
                Size::parse(raw)
            );
        }
        for raw in [
            "1e30",
            "1e300",
            "1e99999999999",
            "400000000000Ei",
            &"9".repeat(200),
        ] {
            assert!(
                matches!(Size::parse(raw), Err(QuantityError::TooLarge(_))),
                "{raw}: {:?}",
                Size::parse(raw)
            );
        }
        assert!(matches!(
            Size::parse("-1Gi"),
            Err(QuantityError::Negative(_))
        ));
        // A zero with a sign is still zero.
        assert_eq!(Size::parse("-0").map(Size::bytes), Ok(0));
    }

    #[test]
    fn a_long_string_is_refused_and_not_echoed() {
        let raw = "7".repeat(3000);
        let Err(QuantityError::TooLarge(shown)) = Size::parse(&raw) else {
            panic!("a 3000-digit quantity is too large");
        };
        assert!(shown.len() < 40, "{shown}");
        // Up to the limit, leading zeros and a long fraction are read exactly.
        let raw = format!("{}1.{}1", "0".repeat(30), "0".repeat(31));
        assert_eq!(raw.len(), MAX_LEN);
        assert_eq!(Size::parse(&raw).map(Size::bytes), Ok(2));
    }
}
