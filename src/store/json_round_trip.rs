//! Postgres's `jsonb` keeps a JSON number as a `numeric` and gives it back in plain decimal
//! notation: `1.7976931348623157e308` comes back as 309 digits, `5e-324` as 323 zeros after the
//! point and a 5. Whatever the API accepted must read back from that text as the same double, or
//! the document fails to load and every list that includes it fails with it. serde_json reads
//! such text exactly only with its `float_roundtrip` feature, which this crate enables; these
//! tests hold every finite double to it (the behavioural tests check the extremes on a real
//! Postgres).

use serde_json::{Number, Value};

/// A number's text (`1.5e-7`, `-2e308`, `0.25`) as Postgres prints a `numeric`.
fn plain_decimal(text: &str) -> String {
    let (sign, unsigned) = text.strip_prefix('-').map(|rest| ("-", rest)).unwrap_or(("", text));
    let (mantissa, exponent) = match unsigned.find(['e', 'E']) {
        Some(i) => (&unsigned[..i], unsigned[i + 1..].parse::<i64>().unwrap()),
        None => (unsigned, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = format!("{int}{frac}");
    let point = int.len() as i64 + exponent;
    let (whole, fraction) = if point <= 0 {
        ("0".to_owned(), format!("{}{digits}", "0".repeat((-point) as usize)))
    } else if point as usize >= digits.len() {
        (format!("{digits}{}", "0".repeat(point as usize - digits.len())), String::new())
    } else {
        (digits[..point as usize].to_owned(), digits[point as usize..].to_owned())
    };
    let whole = whole.trim_start_matches('0');
    let whole = if whole.is_empty() { "0" } else { whole };
    if fraction.is_empty() {
        format!("{sign}{whole}")
    } else {
        format!("{sign}{whole}.{fraction}")
    }
}

/// Whether a double survives both backends: SQLite's text and Postgres's plain decimal.
fn reads_back(f: f64) -> bool {
    let text = Number::from_f64(f).unwrap().to_string();
    [plain_decimal(&text), text].iter().all(|t| match serde_json::from_str::<Value>(t) {
        Ok(Value::Number(back)) => back.as_f64() == Some(f),
        _ => false,
    })
}

#[test]
fn numbers_are_written_out_as_postgres_prints_them() {
    assert_eq!(plain_decimal("1.5e3"), "1500");
    assert_eq!(plain_decimal("1.5e-3"), "0.0015");
    assert_eq!(plain_decimal("-2e2"), "-200");
    assert_eq!(plain_decimal("12.5"), "12.5");
    assert_eq!(plain_decimal("5e-324"), format!("0.{}5", "0".repeat(323)));
    assert_eq!(plain_decimal("1.7976931348623157e308").len(), 309);
}

#[test]
fn the_extremes_of_doubles_read_back() {
    for f in [f64::MAX, f64::MIN, f64::MIN_POSITIVE, 5e-324, -5e-324, 2.225073858507201e-308, 1e-7, 0.1, 1e16] {
        assert!(reads_back(f), "{f:e}");
    }
}

#[test]
fn every_double_reads_back() {
    // Random bit patterns cover every exponent, subnormals included.
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut checked = 0;
    while checked < 20_000 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let f = f64::from_bits(seed);
        if f.is_finite() {
            assert!(reads_back(f), "{f:e} ({seed:#x})");
            checked += 1;
        }
    }
}
