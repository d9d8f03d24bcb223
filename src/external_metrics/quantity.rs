//! Kubernetes `resource.Quantity` strings, as apimachinery's `quantity.go` writes and reads them.
//!
//! Hand-written: k8s-openapi's `Quantity` is a bare string with no canonical form. The HPA reads
//! a value with `MilliValue()` (a ceiling), so a fractional value is rounded up to the milli.

/// The canonical DecimalSI string of a value held in milli-units: no fractional digits, the
/// largest suffix that loses nothing, and a sign only when negative (Go's `String()`).
pub fn from_milli(milli: i64) -> String {
    if milli == 0 {
        return "0".into();
    }
    let sign = if milli < 0 { "-" } else { "" };
    let mut v = milli.unsigned_abs();
    if !v.is_multiple_of(1000) {
        return format!("{sign}{v}m");
    }
    v /= 1000;
    for suffix in ["", "k", "M", "G", "T", "P"] {
        if !v.is_multiple_of(1000) {
            return format!("{sign}{v}{suffix}");
        }
        v /= 1000;
    }
    format!("{sign}{v}E")
}

/// A finite value as milli-units, rounded away from zero like `MilliValue()`; `None` for NaN,
/// infinities and values past `i64` milli-units.
#[cfg(test)]
pub(crate) fn milli_ceil(value: f64) -> Option<i64> {
    let m = value * 1000.0;
    let m = if m >= 0.0 { m.ceil() } else { m.floor() };
    if !m.is_finite() || m.abs() >= i64::MAX as f64 {
        return None;
    }
    Some(m as i64)
}

/// The canonical string of a whole replica count.
pub fn from_replicas(replicas: u32) -> String {
    from_milli(i64::from(replicas) * 1000)
}

/// `MilliValue()` of a quantity string: any well-formed decimal or binary-suffixed quantity,
/// rounded up to the milli. `None` when it is not a quantity or does not fit.
pub fn parse_milli(text: &str) -> Option<i64> {
    let (negative, rest) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    let digits_end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    let (number, suffix) = rest.split_at(digits_end);
    let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
    if (whole.is_empty() && frac.is_empty()) || frac.contains('.') {
        return None;
    }
    // value = digits * 10^(scale10 - frac.len()) * 2^(scale2)
    let (scale10, scale2): (i32, u32) = match suffix {
        "n" => (-9, 0),
        "u" => (-6, 0),
        "m" => (-3, 0),
        "" => (0, 0),
        "k" => (3, 0),
        "M" => (6, 0),
        "G" => (9, 0),
        "T" => (12, 0),
        "P" => (15, 0),
        "E" => (18, 0),
        "Ki" => (0, 10),
        "Mi" => (0, 20),
        "Gi" => (0, 30),
        "Ti" => (0, 40),
        "Pi" => (0, 50),
        "Ei" => (0, 60),
        s if s.starts_with(['e', 'E']) => (s[1..].parse::<i32>().ok()?, 0),
        _ => return None,
    };
    let digits = format!("{whole}{frac}");
    let mantissa: u128 = digits.trim_start_matches('0').parse().unwrap_or(0);
    if digits.len() > 30 {
        return None;
    }
    // In milli-units: multiply by 10^(scale10 + 3 - frac.len()).
    let exp = scale10 + 3 - frac.len() as i32;
    let mut num = mantissa.checked_mul(1u128.checked_shl(scale2)?)?;
    let mut den: u128 = 1;
    if exp >= 0 {
        num = num.checked_mul(10u128.checked_pow(exp as u32)?)?;
    } else {
        den = 10u128.checked_pow(exp.unsigned_abs())?;
    }
    let (q, r) = (num / den, num % den);
    // apimachinery's `negativeScaleInt64` rounds an inexact value away from zero.
    let magnitude = q + u128::from(r != 0);
    let magnitude = i64::try_from(magnitude).ok()?;
    Some(if negative { -magnitude } else { magnitude })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn every_quantity_is_written_as_go_writes_it() {
        for (milli, text) in [
            (0, "0"),
            (1, "1m"),
            (1500, "1500m"),
            (7000, "7"),
            (1_000_000, "1k"),
            (1_500_000, "1500"),
            (1_000_000_000, "1M"),
            (-2500, "-2500m"),
            (5_000_000_000_000_000_000, "5P"),
            (1_234_000_000_000_000_000, "1234T"),
        ] {
            assert_eq!(from_milli(milli), text, "milli {milli}");
        }
    }

    #[test]
    fn a_fractional_signal_rounds_up_to_the_milli_like_milli_value() {
        assert_eq!(milli_ceil(12.3456), Some(12_346));
        assert_eq!(milli_ceil(0.0001), Some(1));
        assert_eq!(milli_ceil(-0.0015), Some(-2), "away from zero, as Go");
        assert_eq!(milli_ceil(f64::NAN), None);
        assert_eq!(milli_ceil(f64::INFINITY), None);
        assert_eq!(parse_milli("1.5"), Some(1500));
        assert_eq!(parse_milli("1n"), Some(1), "Go rounds 1n up to 1m");
        assert_eq!(parse_milli("-1n"), Some(-1));
        assert_eq!(parse_milli("1Ki"), Some(1_024_000));
        assert_eq!(parse_milli("12e3"), Some(12_000_000));
        assert_eq!(parse_milli("abc"), None);
        assert_eq!(parse_milli("1.2.3"), None);
        assert_eq!(parse_milli("7X"), None);
    }

    #[test]
    fn replica_counts_are_whole_quantities() {
        assert_eq!(from_replicas(0), "0");
        assert_eq!(from_replicas(7), "7");
        assert_eq!(from_replicas(1000), "1k");
        assert_eq!(from_replicas(1500), "1500");
    }

    proptest! {
        #[test]
        fn the_canonical_form_parses_back_to_the_same_milli_value(m in -(1i64 << 62)..(1i64 << 62)) {
            let text = from_milli(m);
            prop_assert_eq!(parse_milli(&text), Some(m), "{}", text);
        }

        #[test]
        fn no_shorter_suffix_is_left_unused(m in 1i64..(1i64 << 62)) {
            let text = from_milli(m);
            let digits: String = text.chars().take_while(char::is_ascii_digit).collect();
            // Canonical: the number before the suffix is never a multiple of 1000 (except E).
            if !text.ends_with('E') {
                prop_assert!(digits.parse::<u64>().unwrap() % 1000 != 0, "{}", text);
            }
        }

        #[test]
        fn a_float_served_is_never_closer_to_zero_than_its_value(v in -1e9f64..1e9f64) {
            let m = milli_ceil(v).unwrap();
            let back = parse_milli(&from_milli(m)).unwrap();
            prop_assert!((back as f64).abs() >= (v * 1000.0).abs() - 1e-6);
            prop_assert!((back as f64 - v * 1000.0).abs() < 1.0 + 1e-6);
        }
    }
}
