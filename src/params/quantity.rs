//! Kubernetes resource quantities (`10Gi`, `500M`, `1.5Ti`, `1e9`) as whole bytes: the
//! claims' requested sizes and the `minFreeBytes` class parameter. Fractions round up,
//! as the API server's own `Value()` does, so a size is never taken for smaller than
//! it is.

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum QuantityError {
    #[error(
        "{0:?} is not a quantity: expected a number with an optional suffix such as 10Gi, 500M or 1e9"
    )]
    Invalid(String),
    #[error("{0:?} is too large")]
    Overflow(String),
}

/// Whole bytes in `raw`, rounded up; negative quantities are refused.
pub fn parse_bytes(raw: &str) -> Result<u64, QuantityError> {
    let invalid = || QuantityError::Invalid(raw.to_string());
    let s = raw.trim();
    let s = s.strip_prefix('+').unwrap_or(s);
    let number_len = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(number_len);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') {
        return Err(invalid());
    }
    // mantissa * 2^shift * 10^exp10, computed exactly in u128.
    let digits = format!("{whole}{fraction}");
    let mantissa: u128 = digits
        .parse()
        .map_err(|_| QuantityError::Overflow(raw.to_string()))?;
    let mut exp10 = -i32::try_from(fraction.len()).map_err(|_| invalid())?;
    let mut shift = 0u32;
    match suffix {
        "" => {}
        "Ki" => shift = 10,
        "Mi" => shift = 20,
        "Gi" => shift = 30,
        "Ti" => shift = 40,
        "Pi" => shift = 50,
        "Ei" => shift = 60,
        "n" => exp10 -= 9,
        "u" => exp10 -= 6,
        "m" => exp10 -= 3,
        "k" => exp10 += 3,
        "M" => exp10 += 6,
        "G" => exp10 += 9,
        "T" => exp10 += 12,
        "P" => exp10 += 15,
        "E" => exp10 += 18,
        e if e.starts_with(['e', 'E']) => {
            let exp: i32 = e[1..].parse().map_err(|_| invalid())?;
            if !(-40..=40).contains(&exp) {
                return Err(QuantityError::Overflow(raw.to_string()));
            }
            exp10 += exp;
        }
        _ => return Err(invalid()),
    }
    let overflow = || QuantityError::Overflow(raw.to_string());
    let mut value = mantissa.checked_mul(1u128 << shift).ok_or_else(overflow)?;
    if exp10 >= 0 {
        let scale = 10u128
            .checked_pow(exp10.unsigned_abs())
            .ok_or_else(overflow)?;
        value = value.checked_mul(scale).ok_or_else(overflow)?;
    } else {
        let Some(scale) = 10u128.checked_pow(exp10.unsigned_abs()) else {
            // Smaller than any byte: a nonzero amount still rounds up to one.
            return Ok(u64::from(value > 0));
        };
        value = value.div_ceil(scale);
    }
    u64::try_from(value).map_err(|_| overflow())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_as_the_api_server_writes_them() {
        for (raw, want) in [
            ("0", 0),
            ("1", 1),
            ("1Ki", 1024),
            ("10Gi", 10 << 30),
            ("1.5Gi", 3 << 29),
            ("500M", 500_000_000),
            ("1k", 1000),
            ("1e9", 1_000_000_000),
            ("2E3", 2000),
            ("1.5", 2),
            ("100m", 1),
            ("0.0001", 1),
            ("1e-3", 1),
            (" 8Ei ", 8 << 60),
            ("+5", 5),
            (".5Ki", 512),
        ] {
            assert_eq!(parse_bytes(raw), Ok(want), "{raw}");
        }
        for bad in [
            "", "Gi", "-1Gi", "1GB", "1 Gi", "1..5", "1.2.3", "1e", "x", "1ee3",
        ] {
            assert!(
                matches!(parse_bytes(bad), Err(QuantityError::Invalid(_))),
                "{bad:?}"
            );
        }
        for big in ["16Ei", "99999999999999999999999999999999999999999", "1e40"] {
            assert!(
                matches!(parse_bytes(big), Err(QuantityError::Overflow(_))),
                "{big:?}"
            );
        }
    }
}
