//! What `openapi.yaml` says that the validator would not hold input to: a schema keyword outside
//! [`KEYWORDS`] and [`ANNOTATIONS`], one of them where the walk of [`validate`](super::validate)
//! skips it, a `type` or `format` it does not know, a reference to no schema, a parameter or a
//! body it does not read. A test runs this over the document, so that the document cannot promise
//! a check the server does not make.

use serde_json::Value;

use super::{ApiSpec, ANNOTATIONS, FORMATS, KEYWORDS, SCHEMA_PREFIX, TYPES};

/// Every schema the validator reads input against: components, query parameters and
/// request bodies, with where each one is, in `openapi.yaml`'s terms.
fn input_schemas(document: &Value) -> Vec<(String, &Value, Slot)> {
    let mut found = Vec::new();
    if let Some(schemas) = document["components"]["schemas"].as_object() {
        found.extend(schemas.iter().map(|(name, s)| (format!("{SCHEMA_PREFIX}{name}"), s, Slot::Nested)));
    }
    for (path, item) in document["paths"].as_object().into_iter().flatten() {
        for (method, op) in item.as_object().into_iter().flatten() {
            let at = format!("{} {path}", method.to_uppercase());
            for param in op["parameters"].as_array().into_iter().flatten() {
                let name = param["name"].as_str().unwrap_or_default();
                found.push((format!("{at} parameter {name}"), &param["schema"], Slot::Input));
            }
            for (content_type, content) in op["requestBody"]["content"].as_object().into_iter().flatten() {
                found.push((format!("{at} requestBody {content_type}"), &content["schema"], Slot::Input));
            }
        }
    }
    found
}

/// Where `document` says something the validator would not hold input to: a keyword it
/// neither enforces nor declares an annotation, a keyword where the validator skips it, a
/// parameter it does not read, a body it does not parse.
fn document_problems(document: &Value) -> Vec<String> {
    let spec = ApiSpec::parse(&document.to_string()).unwrap();
    let mut problems = Vec::new();
    for (path, item) in document["paths"].as_object().into_iter().flatten() {
        for (method, op) in item.as_object().into_iter().flatten() {
            let at = format!("{} {path}", method.to_uppercase());
            for param in op["parameters"].as_array().into_iter().flatten() {
                let location = param["in"].as_str().unwrap_or_default();
                if location != "query" {
                    let name = param["name"].as_str().unwrap_or_default();
                    problems.push(format!("{at} parameter {name}: only query parameters are read, not {location}"));
                }
            }
            for content_type in op["requestBody"]["content"].as_object().into_iter().flatten().map(|(k, _)| k) {
                if content_type != "application/json" {
                    problems.push(format!("{at} requestBody: only application/json is read, not {content_type}"));
                }
            }
        }
    }
    for (at, schema, slot) in input_schemas(document) {
        schema_problems(&spec, schema, &at, slot, &mut problems);
    }
    problems
}

/// Where a schema sits, which decides whether its `default` is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    /// A property of an object: the object fills in the default of an absent field.
    Property,
    /// A query parameter's or a request body's schema: the extractors fill in the default.
    Input,
    /// Anywhere else (a component, a list's items, a union's member): no default is read.
    Nested,
}

/// Reports, with where it is, every keyword of `schema` and of the schemas inside it that the
/// validator does not hold input to: one outside [`KEYWORDS`] and [`ANNOTATIONS`], one that the
/// walk skips where it stands, a value of `type` or `format` it does not know, a reference to no
/// schema.
fn schema_problems(spec: &ApiSpec, schema: &Value, at: &str, slot: Slot, problems: &mut Vec<String>) {
    let Some(object) = schema.as_object() else {
        problems.push(format!("{at}: a schema must be an object, not {schema}"));
        return;
    };
    let text = |v: &Value| v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string());
    let resolves = |r: &Value| {
        r.as_str().and_then(|r| r.strip_prefix(SCHEMA_PREFIX)).is_some_and(|name| !spec.schema(name).is_null())
    };
    // The validator follows the first of these it finds and reads nothing else of the schema.
    let combinator = ["$ref", "anyOf", "oneOf", "allOf"].into_iter().find(|k| object.contains_key(*k));
    let ty = object.get("type").and_then(Value::as_str);
    let properties = object.get("properties").and_then(Value::as_object);
    let mut report = |what: String| problems.push(format!("{at}: {what}"));
    for (keyword, value) in object {
        let keyword = keyword.as_str();
        if ANNOTATIONS.contains(&keyword) {
            continue;
        }
        if !KEYWORDS.contains(&keyword) {
            report(format!("{keyword} is not enforced"));
            continue;
        }
        if let Some(c) = combinator {
            if keyword != c && keyword != "default" && !(keyword == "discriminator" && c == "oneOf") {
                report(format!("{keyword} is ignored next to {c}"));
                continue;
            }
        }
        let needs = match keyword {
            "properties" | "required" | "additionalProperties" => Some("object"),
            "items" => Some("array"),
            "format" => Some("string"),
            _ => None,
        };
        if let Some(needed) = needs.filter(|&needed| ty != Some(needed)) {
            report(format!("{keyword} is ignored without type {needed}"));
            continue;
        }
        let shape_ok = match keyword {
            "anyOf" | "oneOf" | "allOf" | "enum" | "required" => value.is_array(),
            "properties" | "discriminator" => value.is_object(),
            _ => true,
        };
        if !shape_ok {
            report(format!("{keyword} {value} is not of the shape the validator reads"));
            continue;
        }
        match keyword {
            "$ref" if !resolves(value) => report(format!("$ref {} points to no schema", text(value))),
            "type" if !value.as_str().is_some_and(|t| TYPES.contains(&t)) => {
                report(format!("type {value} is not one of TYPES"))
            }
            "format" if !value.as_str().is_some_and(|f| FORMATS.contains(&f)) => {
                report(format!("format {} is not enforced", text(value)))
            }
            // Pydantic writes a literal as both, the same one value: then nothing is lost.
            "const" if object.get("enum").is_some_and(|e| *e != Value::Array(vec![value.clone()])) => {
                report("const is ignored next to an enum that is not just it".to_owned())
            }
            "default" if slot == Slot::Nested => {
                report("default is read only for a property, a parameter or a body".to_owned())
            }
            "additionalProperties" if properties.is_some() && *value != Value::Bool(false) => report(format!(
                "additionalProperties {value} is ignored next to properties: a model drops undeclared fields"
            )),
            "required" => {
                for name in value.as_array().into_iter().flatten() {
                    if !name.as_str().is_some_and(|n| properties.is_some_and(|p| p.contains_key(n))) {
                        report(format!("required {name} is not one of the properties"));
                    }
                }
            }
            "discriminator" => match value.get("mapping").and_then(Value::as_object) {
                None => report("discriminator has no mapping: every tag would be refused".to_owned()),
                Some(mapping) => {
                    for (tag, target) in mapping {
                        if !resolves(target) {
                            report(format!("discriminator mapping {tag}: {} points to no schema", text(target)));
                        }
                    }
                }
            },
            _ => {}
        }
    }
    for (name, property) in properties.into_iter().flatten() {
        schema_problems(spec, property, &format!("{at}/properties/{name}"), Slot::Property, problems);
    }
    for key in ["items", "additionalProperties"] {
        if let Some(inner) = object.get(key).filter(|v| v.is_object()) {
            schema_problems(spec, inner, &format!("{at}/{key}"), Slot::Nested, problems);
        }
    }
    for key in ["anyOf", "oneOf", "allOf"] {
        for (i, member) in object.get(key).and_then(Value::as_array).into_iter().flatten().enumerate() {
            schema_problems(spec, member, &format!("{at}/{key}/{i}"), Slot::Nested, problems);
        }
    }
}

mod tests {
    use serde_json::json;

    use super::super::spec;
    use super::*;

    #[test]
    fn the_validator_enforces_every_keyword_openapi_yaml_uses() {
        let problems = document_problems(spec().document());
        assert!(problems.is_empty(), "openapi.yaml says what the validator does not check:\n{}", problems.join("\n"));
    }

    #[test]
    fn keywords_the_validator_ignores_are_reported_with_where_they_are() {
        let document = json!({
            "paths": {"/v1/things/list": {"get": {
                "parameters": [
                    {"name": "code", "in": "query", "schema": {"type": "string", "pattern": "^[A-Z]+$"}},
                    {"name": "x-trace", "in": "header", "schema": {"type": "string"}},
                ],
                "requestBody": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Nope"}}}},
            }}},
            "components": {"schemas": {
                "Thing": {"type": "object", "title": "Thing", "properties": {
                    "count": {"type": "integer", "multipleOf": 2, "description": "even"},
                    "tags": {"type": "array", "items": {"type": "string", "maxLength": 3}},
                    "when": {"type": "string", "format": "date-time"},
                    "kind": {"anyOf": [{"type": "string"}, {"type": ["integer", "null"]}], "enum": ["a"]},
                    "type": {"type": "string", "title": "a property may be called like a keyword"},
                }},
            }},
        });
        let mut problems = document_problems(&document);
        problems.sort();
        assert_eq!(
            problems,
            [
                "#/components/schemas/Thing/properties/count: multipleOf is not enforced",
                "#/components/schemas/Thing/properties/kind/anyOf/1: type [\"integer\",\"null\"] is not one of TYPES",
                "#/components/schemas/Thing/properties/kind: enum is ignored next to anyOf",
                "#/components/schemas/Thing/properties/tags/items: maxLength is not enforced",
                "#/components/schemas/Thing/properties/when: format date-time is not enforced",
                "GET /v1/things/list parameter code: pattern is not enforced",
                "GET /v1/things/list parameter x-trace: only query parameters are read, not header",
                "GET /v1/things/list requestBody application/json: $ref #/components/schemas/Nope points to no schema",
            ]
        );
    }

    #[test]
    fn keywords_where_the_walk_skips_them_are_reported() {
        let schema = json!({
            "type": "object",
            "required": ["name", "ghost"],
            "additionalProperties": true,
            "properties": {
                "name": {"type": "string", "default": "x"},
                "kind": {"type": "string", "enum": ["a", "b"], "const": "a"},
                "tags": {"items": {"type": "string", "default": "t"}},
                "id": {"$ref": "#/components/schemas/Nope", "type": "string"},
                "pick": {
                    "oneOf": [{"$ref": "#/components/schemas/AzureVoice"}],
                    "discriminator": {"propertyName": "type"},
                },
                "when": {"format": "uuid"},
            },
        });
        let mut problems = Vec::new();
        schema_problems(spec(), &schema, "S", Slot::Nested, &mut problems);
        problems.sort();
        assert_eq!(
            problems,
            [
                "S/properties/id: $ref #/components/schemas/Nope points to no schema",
                "S/properties/id: type is ignored next to $ref",
                "S/properties/kind: const is ignored next to an enum that is not just it",
                "S/properties/pick: discriminator has no mapping: every tag would be refused",
                "S/properties/tags/items: default is read only for a property, a parameter or a body",
                "S/properties/tags: items is ignored without type array",
                "S/properties/when: format is ignored without type string",
                "S: additionalProperties true is ignored next to properties: a model drops undeclared fields",
                "S: required \"ghost\" is not one of the properties",
            ]
        );
    }
}
