//! The pydantic-like walk of a value through a schema: references, unions (smart, or tagged by a
//! discriminator), `allOf`, objects with their required fields, defaults and extra fields, and
//! lists. Single values are left to [`scalars`](super::scalars).
//!
//! [`KEYWORDS`] is what this walk acts on, and [`ANNOTATIONS`] what it reads past on purpose; a
//! test (in `coverage`) fails when `openapi.yaml` uses anything else, or uses one of them where
//! the walk skips it.

use serde_json::{Map, Value};

use super::scalars::{boolean, choices, describe_kind, integer, issue, join_or, number, string, Mode};
use super::{ApiSpec, SCHEMA_PREFIX};
use crate::error::{Issue, Loc};

/// The JSON-schema keywords the validator holds input to.
///
/// - `$ref`: a schema of `components/schemas`, whose objects are models (unknown fields dropped);
/// - `anyOf`, and `oneOf` without a `discriminator`: pydantic's smart union, strict then lax;
/// - `oneOf` with a `discriminator` (`propertyName`, `mapping`): the variant its tag names;
/// - `allOf`: every part;
/// - `type`: one of [`TYPES`]; `format`, for a string: one of [`FORMATS`];
/// - `enum` and `const`, after the type;
/// - for an object: `properties`, `required`, and `additionalProperties` (`false` forbids extra
///   fields; a schema checks every value of a dictionary); for a list: `items`;
/// - `default`: filled in for an absent property, query parameter or body.
///
/// Beside `$ref`, `anyOf`, `oneOf` or `allOf` only annotations, `default` (read by the enclosing
/// object) and, with `oneOf`, `discriminator` count.
pub const KEYWORDS: &[&str] = &[
    "$ref",
    "anyOf",
    "oneOf",
    "discriminator",
    "allOf",
    "type",
    "format",
    "enum",
    "const",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "default",
];

/// Keywords that describe a schema without constraining input, and are not enforced.
pub const ANNOTATIONS: &[&str] = &["title", "description", "example", "examples", "deprecated", "$comment"];

/// The values of `type` the validator knows (one name, never a list of them).
pub const TYPES: &[&str] = &["string", "integer", "number", "boolean", "null", "array", "object"];

/// The values of `format` the validator enforces (on a string).
pub const FORMATS: &[&str] = &["uuid"];

impl ApiSpec {
    /// Checks `value` against `schema`, coercing and filling in declared defaults in place.
    pub fn validate(&self, schema: &Value, value: &mut Value, loc: Vec<Loc>) -> Result<(), Vec<Issue>> {
        self.run(schema, value, loc, false)
    }

    /// Like [`validate`](Self::validate), and also gives every optional field that was left out
    /// its implicit value (null, an empty list, a nested object's defaults), so that a stored
    /// document has every field its response shape names.
    pub fn complete(&self, schema_name: &str, value: &mut Value, loc: Vec<Loc>) -> Result<(), Vec<Issue>> {
        let schema = Value::String(format!("{SCHEMA_PREFIX}{schema_name}"));
        let schema = Value::Object(Map::from_iter([("$ref".to_owned(), schema)]));
        self.run(&schema, value, loc, true)
    }

    fn run(&self, schema: &Value, value: &mut Value, loc: Vec<Loc>, fill: bool) -> Result<(), Vec<Issue>> {
        let checker = Checker { spec: self, fill };
        let mut issues = Vec::new();
        let mut loc = loc;
        checker.check(schema, value, &mut loc, Mode::Lax, false, &mut issues);
        if issues.is_empty() {
            Ok(())
        } else {
            Err(issues)
        }
    }
}

struct Checker<'s> {
    spec: &'s ApiSpec,
    fill: bool,
}

impl Checker<'_> {
    /// `model`: the schema was reached through a `$ref`, so an object is a model whose unknown
    /// fields are dropped (rather than a free-form dictionary that is kept as it is).
    fn check(
        &self,
        schema: &Value,
        value: &mut Value,
        loc: &mut Vec<Loc>,
        mode: Mode,
        model: bool,
        issues: &mut Vec<Issue>,
    ) {
        if schema.get("$ref").is_some() {
            let target = self.spec.resolve(schema);
            return self.check(target, value, loc, mode, true, issues);
        }
        if let Some(branches) = schema.get("anyOf").and_then(Value::as_array) {
            return self.any_of(branches, value, loc, mode, issues);
        }
        if let Some(branches) = schema.get("oneOf").and_then(Value::as_array) {
            return match schema.get("discriminator") {
                Some(d) => self.tagged(d, value, loc, mode, issues),
                None => self.any_of(branches, value, loc, mode, issues),
            };
        }
        if let Some(parts) = schema.get("allOf").and_then(Value::as_array) {
            for part in parts {
                self.check(part, value, loc, mode, model, issues);
            }
            return;
        }
        let before = issues.len();
        match schema.get("type").and_then(Value::as_str) {
            Some("string") => string(schema, value, loc, issues),
            Some("integer") => integer(value, loc, mode, issues),
            Some("number") => number(value, loc, mode, issues),
            Some("boolean") => boolean(value, loc, mode, issues),
            Some("null") if !value.is_null() => {
                issues.push(issue(loc, "none_required", "Input should be null"));
            }
            Some("array") => self.array(schema, value, loc, mode, issues),
            Some("object") => self.object(schema, value, loc, mode, model, issues),
            _ => {}
        }
        if issues.len() == before {
            choices(schema, value, loc, issues);
        }
    }

    fn array(&self, schema: &Value, value: &mut Value, loc: &mut Vec<Loc>, mode: Mode, issues: &mut Vec<Issue>) {
        let Some(items) = value.as_array_mut() else {
            issues.push(issue(loc, "list_type", "Input should be a valid list"));
            return;
        };
        if let Some(item_schema) = schema.get("items") {
            for (i, item) in items.iter_mut().enumerate() {
                loc.push(Loc::Index(i));
                self.check(item_schema, item, loc, mode, false, issues);
                loc.pop();
            }
        }
    }

    fn object(
        &self,
        schema: &Value,
        value: &mut Value,
        loc: &mut Vec<Loc>,
        mode: Mode,
        model: bool,
        issues: &mut Vec<Issue>,
    ) {
        let Some(object) = value.as_object_mut() else {
            let (kind, msg) = if model {
                ("model_attributes_type", "Input should be a valid dictionary or object to extract fields from")
            } else {
                ("dict_type", "Input should be a valid dictionary")
            };
            issues.push(issue(loc, kind, msg));
            return;
        };
        let properties = schema.get("properties").and_then(Value::as_object);
        let required: Vec<&str> = schema
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();

        if let Some(properties) = properties {
            // A model keeps only the fields it declares.
            object.retain(|k, _| properties.contains_key(k));
            for (name, prop) in properties {
                loc.push(Loc::Field(name.clone()));
                match object.get_mut(name) {
                    Some(v) if self.is_undefined(prop, v) => {
                        // `{}` where the spec allows `Undefined` means "leave as it is".
                        object.shift_remove(name);
                    }
                    Some(v) => self.check(prop, v, loc, mode, false, issues),
                    None => {
                        if let Some(default) = prop.get("default") {
                            object.insert(name.clone(), default.clone());
                            if self.is_undefined(prop, &object[name]) {
                                object.shift_remove(name);
                            }
                        } else if required.contains(&name.as_str()) {
                            issues.push(issue(loc, "missing", "Field required"));
                        } else if self.fill {
                            if let Some(v) = self.implicit_default(prop) {
                                object.insert(name.clone(), v);
                            }
                        }
                    }
                }
                loc.pop();
            }
            // Fields in the order the schema declares them, as pydantic writes them.
            let mut ordered = Map::with_capacity(object.len());
            for name in properties.keys() {
                if let Some(v) = object.shift_remove(name) {
                    ordered.insert(name.clone(), v);
                }
            }
            *object = ordered;
        } else if model {
            // A model with no fields (an empty config): nothing of the input is kept.
            if schema.get("additionalProperties").is_none() {
                object.clear();
            }
        }

        match schema.get("additionalProperties") {
            Some(Value::Bool(false)) => {
                let extra: Vec<String> =
                    object.keys().filter(|k| properties.is_none_or(|p| !p.contains_key(*k))).cloned().collect();
                for key in extra {
                    loc.push(Loc::Field(key));
                    issues.push(issue(loc, "extra_forbidden", "Extra inputs are not permitted"));
                    loc.pop();
                }
            }
            Some(item_schema @ Value::Object(_)) if properties.is_none() => {
                for (key, item) in object.iter_mut() {
                    loc.push(Loc::Field(key.clone()));
                    self.check(item_schema, item, loc, mode, false, issues);
                    loc.pop();
                }
            }
            _ => {}
        }
    }

    fn any_of(&self, branches: &[Value], value: &mut Value, loc: &mut Vec<Loc>, mode: Mode, issues: &mut Vec<Issue>) {
        let modes: &[Mode] = if mode == Mode::Strict { &[Mode::Strict] } else { &[Mode::Strict, Mode::Lax] };
        for &m in modes {
            for branch in branches {
                let mut candidate = value.clone();
                let mut found = Vec::new();
                self.check(branch, &mut candidate, loc, m, false, &mut found);
                if found.is_empty() {
                    *value = candidate;
                    return;
                }
            }
        }
        // No member fits: report the errors of the member whose JSON type the input has (the one
        // with the fewest errors), or say which types would do.
        let mut best: Option<Vec<Issue>> = None;
        let exact = branches.iter().any(|b| self.accepts_json_type(b, value, false));
        for branch in branches {
            if !self.accepts_json_type(branch, value, !exact) {
                continue;
            }
            let mut candidate = value.clone();
            let mut found = Vec::new();
            self.check(branch, &mut candidate, loc, mode, false, &mut found);
            if best.as_ref().is_none_or(|b| found.len() < b.len()) {
                best = Some(found);
            }
        }
        match best {
            Some(found) => issues.extend(found),
            None => {
                let mut kinds: Vec<&str> = Vec::new();
                for branch in branches {
                    for kind in self.json_types(branch) {
                        if !kinds.contains(&kind) {
                            kinds.push(kind);
                        }
                    }
                }
                let described: Vec<&str> = kinds.iter().map(|k| describe_kind(k)).collect();
                issues.push(issue(loc, "union_type", format!("Input should be {}", join_or(&described))));
            }
        }
    }

    fn tagged(
        &self,
        discriminator: &Value,
        value: &mut Value,
        loc: &mut Vec<Loc>,
        mode: Mode,
        issues: &mut Vec<Issue>,
    ) {
        let property = discriminator["propertyName"].as_str().unwrap_or("type");
        let mapping = discriminator["mapping"].as_object();
        let expected =
            || mapping.map(|m| m.keys().map(|k| format!("'{k}'")).collect::<Vec<_>>().join(", ")).unwrap_or_default();
        let Some(object) = value.as_object() else {
            issues.push(issue(
                loc,
                "model_attributes_type",
                "Input should be a valid dictionary or object to extract fields from",
            ));
            return;
        };
        let Some(tag) = object.get(property) else {
            issues.push(issue(
                loc,
                "union_tag_not_found",
                format!("Unable to extract tag using discriminator '{property}'; expected one of {}", expected()),
            ));
            return;
        };
        let target = tag.as_str().and_then(|t| mapping.and_then(|m| m.get(t))).and_then(Value::as_str);
        match target {
            Some(r) => {
                let schema = Value::Object(Map::from_iter([("$ref".to_owned(), Value::String(r.to_owned()))]));
                self.check(&schema, value, loc, mode, true, issues);
            }
            None => issues.push(issue(
                loc,
                "union_tag_invalid",
                format!(
                    "Input tag {tag} found using '{property}' does not match any of the expected tags: {}",
                    expected()
                ),
            )),
        }
    }

    /// Whether `value` is `{}` for a field whose schema offers `Undefined` and no dictionary
    /// (for a dictionary-valued field, `{}` is an empty dictionary).
    fn is_undefined(&self, schema: &Value, value: &Value) -> bool {
        if !value.as_object().is_some_and(Map::is_empty) {
            return false;
        }
        let Some(branches) = schema.get("anyOf").and_then(Value::as_array) else {
            return false;
        };
        let offers_undefined =
            branches.iter().any(|b| b.get("$ref").and_then(Value::as_str) == Some("#/components/schemas/Undefined"));
        let offers_dict = branches.iter().any(|b| {
            let b = self.spec.resolve(b);
            b.get("additionalProperties").is_some_and(Value::is_object) && b.get("properties").is_none()
        });
        offers_undefined && !offers_dict
    }

    fn implicit_default(&self, schema: &Value) -> Option<Value> {
        if let Some(branches) = schema.get("anyOf").and_then(Value::as_array) {
            if branches.iter().any(|b| b.get("type").and_then(Value::as_str) == Some("null")) {
                return Some(Value::Null);
            }
            return None;
        }
        let target = match schema.get("allOf").and_then(Value::as_array) {
            Some(parts) if parts.len() == 1 => &parts[0],
            _ => schema,
        };
        if target.get("$ref").is_some() {
            let resolved = self.spec.resolve(target);
            if resolved.get("type").and_then(Value::as_str) == Some("object") {
                let mut v = Value::Object(Map::new());
                let mut found = Vec::new();
                self.check(resolved, &mut v, &mut Vec::new(), Mode::Lax, true, &mut found);
                return found.is_empty().then_some(v);
            }
            return None;
        }
        match target.get("type").and_then(Value::as_str) {
            Some("array") => Some(Value::Array(Vec::new())),
            _ => None,
        }
    }

    fn json_types(&self, schema: &Value) -> Vec<&'static str> {
        let schema = self.spec.resolve(schema);
        for key in ["anyOf", "oneOf", "allOf"] {
            if let Some(branches) = schema.get(key).and_then(Value::as_array) {
                return branches.iter().flat_map(|b| self.json_types(b)).collect();
            }
        }
        match schema.get("type").and_then(Value::as_str) {
            Some("string") if schema.get("format").and_then(Value::as_str) == Some("uuid") => {
                vec!["uuid"]
            }
            Some("string") => vec!["string"],
            Some("integer") => vec!["integer"],
            Some("number") => vec!["number"],
            Some("boolean") => vec!["boolean"],
            Some("null") => vec!["null"],
            Some("array") => vec!["array"],
            Some("object") => vec!["object"],
            _ if schema.get("discriminator").is_some() => vec!["object"],
            _ => vec![],
        }
    }

    /// Whether the input's JSON type is one the schema takes; `coercible` also counts a string
    /// that lax mode could read as a number or a boolean (as query parameters always are).
    fn accepts_json_type(&self, schema: &Value, value: &Value, coercible: bool) -> bool {
        let have = match value {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Number(n) if n.is_f64() => "number",
            Value::Number(_) => "integer",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        };
        self.json_types(schema).iter().any(|&t| {
            t == have
                || (t == "uuid" && have == "string")
                || (t == "number" && have == "integer")
                || (t == "integer" && have == "number")
                || (coercible && have == "string" && matches!(t, "integer" | "number" | "boolean"))
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::{body_issues, spec};
    use super::*;

    fn locs(issues: &[Issue]) -> Vec<String> {
        issues.iter().map(|i| serde_json::to_string(&i.loc).unwrap()).collect()
    }

    #[test]
    fn discriminated_unions_pick_the_variant_and_apply_its_defaults() {
        let (v, issues) = body_issues("VoiceParamsRequest", json!({"type": "voice_azure", "voice_name": "x"}));
        assert!(issues.is_empty(), "{issues:?}");
        assert_eq!(v, json!({"type": "voice_azure", "voice_name": "x", "pitch": 0, "rate": 15}));
    }

    #[test]
    fn missing_fields_are_located_inside_the_variant() {
        let (_, issues) = body_issues("ActionParamsRequest", json!({"type": "action_transfer_call", "config": {}}));
        assert_eq!(locs(&issues), [r#"["body","config","phone_number"]"#]);
        assert_eq!(issues[0].kind, "missing");
    }

    #[test]
    fn unknown_tags_and_enum_values_are_named() {
        let (_, issues) = body_issues("VoiceParamsRequest", json!({"type": "voice_nope"}));
        assert_eq!(issues[0].kind, "union_tag_invalid");
        assert!(issues[0].msg.contains("'voice_azure'"));
        let (_, issues) = body_issues("WebhookParams", json!({"subscriptions": ["event_nope"], "url": "https://x"}));
        assert_eq!(locs(&issues), [r#"["body","subscriptions",0]"#]);
        assert_eq!(issues[0].kind, "enum");
    }

    #[test]
    fn undefined_means_absent_but_an_empty_dictionary_is_a_value() {
        let (v, issues) = body_issues("WebhookUpdateParams", json!({"url": {}, "method": "GET"}));
        assert!(issues.is_empty(), "{issues:?}");
        assert_eq!(v, json!({"method": "GET"}));
        let (v, issues) = body_issues("PromptUpdateParams", json!({"collect_fields": null}));
        assert!(issues.is_empty());
        assert_eq!(v, json!({"collect_fields": null}));
    }

    #[test]
    fn id_or_inline_reports_the_branch_of_the_input_type() {
        let schema = json!({"anyOf": [{"type": "string", "format": "uuid"}, {"$ref": "#/components/schemas/PromptTemplate"}, {"type": "null"}]});
        let mut v = json!("not-a-uuid");
        let issues = spec().validate(&schema, &mut v, vec![]).unwrap_err();
        assert_eq!(issues[0].kind, "uuid_parsing");
        let mut v = json!(12);
        let issues = spec().validate(&schema, &mut v, vec![]).unwrap_err();
        assert_eq!(issues[0].kind, "union_type");
        assert_eq!(issues[0].msg, "Input should be a valid UUID, an object or null");
    }

    #[test]
    fn complete_fills_optional_fields() {
        let mut v = json!({"type": "action_end_conversation"});
        spec().complete("ActionParamsRequest", &mut v, vec![]).unwrap();
        assert_eq!(
            v,
            json!({"type": "action_end_conversation", "config": {},
                   "action_trigger": {"type": "action_trigger_function_call", "config": {}}})
        );
        let mut v = json!({"type": "voice_eleven_labs", "voice_id": "v"});
        spec().complete("VoiceParamsRequest", &mut v, vec![]).unwrap();
        assert_eq!(v["stability"], Value::Null);
        assert_eq!(v["experimental_input_streaming"], json!(false));
    }

    #[test]
    fn unknown_fields_of_models_are_dropped_but_free_form_objects_kept() {
        let (v, _) = body_issues(
            "ActionParamsRequest",
            json!({"type": "action_external", "sneaky": 1, "config": {
                "name": "n", "description": "d", "url": "https://x", "speak_on_send": true,
                "speak_on_receive": false, "input_schema": {"type": "object", "x-any": [1]}}}),
        );
        assert!(v.get("sneaky").is_none());
        assert_eq!(v["config"]["input_schema"]["x-any"], json!([1]));
    }
}
