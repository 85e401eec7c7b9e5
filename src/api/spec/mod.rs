//! The OpenAPI document (`openapi.yaml`) as the one source of truth for request input.
//!
//! Every request's query parameters and JSON body are checked against the operation that the
//! document declares for its route, the way FastAPI and pydantic check them upstream: the same
//! lax coercions (`"4"` for an integer, `"true"` for a boolean), the same defaults, and errors
//! with a `loc`, `msg` and `type` for every field that is wrong. Handlers then deserialize input
//! that is known to be well-formed. Because the document drives validation, the code cannot
//! silently accept or reject something other than what the document says.
//!
//! This module loads the document and looks operations and schemas up in it; `validate` walks a
//! value through a schema (objects, lists, unions, defaults) and `scalars` holds pydantic's
//! coercions and messages for single values. A test (`coverage`) holds every schema keyword the
//! document uses against the keywords the validator declares it enforces ([`KEYWORDS`]).

use std::collections::HashMap;
use std::sync::LazyLock;

use axum::http::Method;
use serde_json::Value;

#[cfg(test)]
mod coverage;
mod scalars;
mod validate;

pub use validate::{ANNOTATIONS, FORMATS, KEYWORDS, TYPES};

const DOCUMENT: &str = include_str!("../../../openapi.yaml");
const SCHEMA_PREFIX: &str = "#/components/schemas/";

static SPEC: LazyLock<ApiSpec> =
    LazyLock::new(|| ApiSpec::parse(DOCUMENT).expect("openapi.yaml is valid (tests check it)"));

/// The spec compiled into the binary.
pub fn spec() -> &'static ApiSpec {
    &SPEC
}

#[derive(Debug)]
pub struct ApiSpec {
    document: Value,
    operations: HashMap<(Method, String), Operation>,
}

#[derive(Debug, Clone)]
pub struct Operation {
    pub id: String,
    pub params: Vec<Param>,
    pub body: Option<BodySpec>,
}

#[derive(Debug, Clone)]
pub struct Param {
    pub name: String,
    pub location: String,
    pub required: bool,
    pub schema: Value,
}

#[derive(Debug, Clone)]
pub struct BodySpec {
    pub required: bool,
    pub schema: Value,
}

impl ApiSpec {
    pub fn parse(yaml: &str) -> anyhow::Result<ApiSpec> {
        let document: Value = serde_norway::from_str(yaml)?;
        let mut operations = HashMap::new();
        let paths = document["paths"].as_object().ok_or_else(|| anyhow::anyhow!("the document has no paths"))?;
        for (path, item) in paths {
            let Some(item) = item.as_object() else {
                continue;
            };
            for (method, op) in item {
                let method: Method = method.to_uppercase().parse()?;
                let params = op["parameters"]
                    .as_array()
                    .map(|list| {
                        list.iter()
                            .map(|p| Param {
                                name: p["name"].as_str().unwrap_or_default().to_owned(),
                                location: p["in"].as_str().unwrap_or_default().to_owned(),
                                required: p["required"].as_bool().unwrap_or(false),
                                schema: p["schema"].clone(),
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let body = op.get("requestBody").map(|rb| BodySpec {
                    required: rb["required"].as_bool().unwrap_or(false),
                    schema: rb["content"]["application/json"]["schema"].clone(),
                });
                let id = op["operationId"].as_str().unwrap_or_default().to_owned();
                operations.insert((method, path.clone()), Operation { id, params, body });
            }
        }
        Ok(ApiSpec { document, operations })
    }

    pub fn document(&self) -> &Value {
        &self.document
    }

    pub fn operation(&self, method: &Method, path: &str) -> Option<&Operation> {
        self.operations.get(&(method.clone(), path.to_owned()))
    }

    pub fn operations(&self) -> impl Iterator<Item = (&(Method, String), &Operation)> {
        self.operations.iter()
    }

    /// A named schema of `components/schemas`.
    pub fn schema(&self, name: &str) -> &Value {
        &self.document["components"]["schemas"][name]
    }

    /// The schema a `$ref` points to (null when it points outside `components/schemas`), or the
    /// schema itself when it is no reference.
    fn resolve<'a>(&'a self, schema: &'a Value) -> &'a Value {
        match schema.get("$ref").and_then(Value::as_str) {
            Some(r) => match r.strip_prefix(SCHEMA_PREFIX) {
                Some(name) => self.schema(name),
                None => &Value::Null,
            },
            None => schema,
        }
    }
}

/// What validating the body `value` against the component schema named `schema` does to it,
/// and the issues found.
#[cfg(test)]
fn body_issues(schema: &str, mut value: Value) -> (Value, Vec<crate::error::Issue>) {
    let schema = serde_json::json!({ "$ref": format!("{SCHEMA_PREFIX}{schema}") });
    let result = spec().validate(&schema, &mut value, vec!["body".into()]);
    (value, result.err().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_of_the_document_is_indexed() {
        let op = spec().operation(&Method::POST, "/v1/voices/create").unwrap();
        assert_eq!(op.id, "create_voice");
        assert!(op.body.as_ref().unwrap().required);
        let list = spec().operation(&Method::GET, "/v1/voices/list").unwrap();
        let names: Vec<&str> = list.params.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["page", "size", "sort_column", "sort_desc"]);
    }
}
