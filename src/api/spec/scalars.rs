//! Single values the way pydantic reads them: the lax coercions of strings, numbers and booleans,
//! UUIDs, `enum` and `const`, and pydantic's wording for each error.

use serde_json::Value;

use crate::error::{Issue, Loc};

/// How far a value may be coerced. Pydantic's "smart" unions try every member strictly (no
/// coercion) before trying them laxly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    Strict,
    Lax,
}

pub(super) fn issue(loc: &[Loc], kind: &str, msg: impl Into<String>) -> Issue {
    Issue::new(loc.to_vec(), kind, msg)
}

pub(super) fn string(schema: &Value, value: &mut Value, loc: &[Loc], issues: &mut Vec<Issue>) {
    let Some(s) = value.as_str() else {
        issues.push(issue(loc, "string_type", "Input should be a valid string"));
        return;
    };
    if schema.get("format").and_then(Value::as_str) == Some("uuid") {
        match uuid::Uuid::parse_str(s.trim()) {
            Ok(id) => *value = Value::String(id.hyphenated().to_string()),
            Err(err) => issues.push(issue(loc, "uuid_parsing", format!("Input should be a valid UUID, {err}"))),
        }
    }
}

pub(super) fn integer(value: &mut Value, loc: &[Loc], mode: Mode, issues: &mut Vec<Issue>) {
    match value {
        Value::Number(n) if n.is_i64() => {}
        Value::Number(n) if n.is_u64() => issues.push(issue(
            loc,
            "int_parsing_size",
            "Input should be an integer between -9223372036854775808 and 9223372036854775807",
        )),
        Value::Number(n) if mode == Mode::Lax => {
            let f = n.as_f64().unwrap_or(f64::NAN);
            if f.fract() == 0.0 && f.abs() < 9.0e15 {
                *value = Value::from(f as i64);
            } else {
                issues.push(issue(
                    loc,
                    "int_from_float",
                    "Input should be a valid integer, got a number with a fractional part",
                ));
            }
        }
        Value::String(s) if mode == Mode::Lax => match s.trim().parse::<i64>() {
            Ok(i) => *value = Value::from(i),
            Err(_) => issues.push(issue(
                loc,
                "int_parsing",
                "Input should be a valid integer, unable to parse string as an integer",
            )),
        },
        _ => issues.push(issue(loc, "int_type", "Input should be a valid integer")),
    }
}

pub(super) fn number(value: &mut Value, loc: &[Loc], mode: Mode, issues: &mut Vec<Issue>) {
    match value {
        Value::Number(_) => {}
        Value::String(s) if mode == Mode::Lax => match s.trim().parse::<f64>() {
            Ok(f) if f.is_finite() => {
                *value = serde_json::Number::from_f64(f).map(Value::Number).unwrap_or(Value::Null)
            }
            _ => issues.push(issue(
                loc,
                "float_parsing",
                "Input should be a valid number, unable to parse string as a number",
            )),
        },
        _ => issues.push(issue(loc, "float_type", "Input should be a valid number")),
    }
}

pub(super) fn boolean(value: &mut Value, loc: &[Loc], mode: Mode, issues: &mut Vec<Issue>) {
    let parsed = match (&*value, mode) {
        (Value::Bool(_), _) => return,
        (Value::String(s), Mode::Lax) => match s.trim().to_ascii_lowercase().as_str() {
            "1" | "on" | "t" | "true" | "y" | "yes" => Some(true),
            "0" | "off" | "f" | "false" | "n" | "no" => Some(false),
            _ => None,
        },
        (Value::Number(n), Mode::Lax) => match n.as_i64() {
            Some(0) => Some(false),
            Some(1) => Some(true),
            _ => None,
        },
        _ => None,
    };
    match parsed {
        Some(b) => *value = Value::Bool(b),
        None if matches!(value, Value::String(_)) && mode == Mode::Lax => {
            issues.push(issue(loc, "bool_parsing", "Input should be a valid boolean, unable to interpret input"))
        }
        None => issues.push(issue(loc, "bool_type", "Input should be a valid boolean")),
    }
}

/// `enum` and `const`, checked after the type.
pub(super) fn choices(schema: &Value, value: &Value, loc: &[Loc], issues: &mut Vec<Issue>) {
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array) {
        if !allowed.contains(value) {
            let names: Vec<String> = allowed.iter().map(quote).collect();
            let (kind, msg) = if allowed.len() == 1 {
                ("literal_error", format!("Input should be {}", names[0]))
            } else {
                ("enum", format!("Input should be {}", join_or(&names)))
            };
            issues.push(issue(loc, kind, msg));
        }
    } else if let Some(constant) = schema.get("const") {
        if constant != value {
            issues.push(issue(loc, "literal_error", format!("Input should be {}", quote(constant))));
        }
    }
}

fn quote(v: &Value) -> String {
    match v {
        Value::String(s) => format!("'{s}'"),
        other => other.to_string(),
    }
}

pub(super) fn join_or<S: AsRef<str>>(items: &[S]) -> String {
    match items {
        [] => String::new(),
        [one] => one.as_ref().to_owned(),
        [rest @ .., last] => {
            format!("{} or {}", rest.iter().map(AsRef::as_ref).collect::<Vec<_>>().join(", "), last.as_ref())
        }
    }
}

pub(super) fn describe_kind(kind: &str) -> &'static str {
    match kind {
        "uuid" => "a valid UUID",
        "string" => "a valid string",
        "integer" => "a valid integer",
        "number" => "a valid number",
        "boolean" => "a valid boolean",
        "null" => "null",
        "array" => "a valid list",
        "object" => "an object",
        _ => "a valid value",
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::body_issues;

    #[test]
    fn lax_coercions_follow_pydantic() {
        let (v, issues) = body_issues(
            "VoiceParamsRequest",
            json!({"type": "voice_eleven_labs", "voice_id": "v", "stability": ".2", "optimize_streaming_latency": "4"}),
        );
        assert!(issues.is_empty(), "{issues:?}");
        assert_eq!(v["stability"], json!(0.2));
        assert_eq!(v["optimize_streaming_latency"], json!(4));
        let (_, issues) =
            body_issues("VoiceParamsRequest", json!({"type": "voice_azure", "voice_name": 5, "pitch": 1.5}));
        let kinds: Vec<&str> = issues.iter().map(|i| i.kind.as_str()).collect();
        assert_eq!(kinds, ["string_type", "int_from_float"]);
    }
}
