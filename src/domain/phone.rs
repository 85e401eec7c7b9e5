//! Phone numbers, accepted in the forms people type and kept in one canonical form: digits
//! only, country code first (`14155550100`), as the Vocode guides show them.

use std::fmt;

use serde::{Serialize, Serializer};

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PhoneNumber(String);

impl PhoneNumber {
    /// Accepts `+1 (415) 555-0100`, `1-415-555-0100`, `14155550100`, `+14155550100`.
    pub fn parse(input: &str) -> Result<PhoneNumber, String> {
        let trimmed = input.trim();
        let rest = trimmed.strip_prefix('+').unwrap_or(trimmed);
        let mut digits = String::with_capacity(rest.len());
        for c in rest.chars() {
            match c {
                '0'..='9' => digits.push(c),
                ' ' | '-' | '.' | '(' | ')' | '\u{a0}' => {}
                _ => {
                    return Err(format!(
                        "'{}' is not a phone number: only digits, spaces, dashes, dots, parentheses and a leading + are allowed",
                        truncate(input)
                    ))
                }
            }
        }
        if digits.len() < 7 || digits.len() > 15 {
            return Err(format!(
                "'{}' is not a phone number: E.164 numbers have 7 to 15 digits, country code first",
                truncate(input)
            ));
        }
        if digits.starts_with('0') {
            return Err(format!(
                "'{}' is not a phone number: it must start with a country code (E.164 numbers do not start with 0)",
                truncate(input)
            ));
        }
        Ok(PhoneNumber(digits))
    }

    /// Digits only: the form the API stores and returns, and Vonage's wire form.
    pub fn digits(&self) -> &str {
        &self.0
    }

    /// `+` and digits: Twilio's wire form.
    pub fn e164(&self) -> String {
        format!("+{}", self.0)
    }
}

fn truncate(input: &str) -> String {
    input.chars().take(40).collect()
}

impl fmt::Display for PhoneNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for PhoneNumber {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_forms_become_canonical_digits() {
        for input in ["+1 (415) 555-0100", "14155550100", "+14155550100", "1.415.555.0100", " 1-415-555-0100 "] {
            assert_eq!(PhoneNumber::parse(input).unwrap().digits(), "14155550100", "{input}");
        }
        assert_eq!(PhoneNumber::parse("14155550100").unwrap().e164(), "+14155550100");
    }

    #[test]
    fn implausible_numbers_are_refused_with_a_reason() {
        assert!(PhoneNumber::parse("1415555O100").unwrap_err().contains("only digits"));
        assert!(PhoneNumber::parse("123").unwrap_err().contains("7 to 15"));
        assert!(PhoneNumber::parse(&"1".repeat(30)).unwrap_err().contains("7 to 15"));
        assert!(PhoneNumber::parse("0415555010").unwrap_err().contains("country code"));
        assert!(PhoneNumber::parse("").is_err());
        assert!(PhoneNumber::parse("+").is_err());
        assert!(PhoneNumber::parse("1; DROP TABLE numbers").is_err());
    }
}
