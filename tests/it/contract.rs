//! openapi.yaml against the upstream Vocode spec (vendored in tests/contract/), and against the
//! server: every operation it documents is routed.

use std::collections::BTreeSet;

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::support::{Backend, TestApp, OPENAPI_YAML, UPSTREAM_OPENAPI};

fn ours() -> Value {
    serde_norway::from_str(OPENAPI_YAML).unwrap()
}

fn upstream() -> Value {
    serde_json::from_str(UPSTREAM_OPENAPI).unwrap()
}

fn operations(doc: &Value) -> Vec<(String, String, Value)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            out.push((path.clone(), method.clone(), op.clone()));
        }
    }
    out
}

fn refs(node: &Value, found: &mut BTreeSet<String>) {
    match node {
        Value::Object(map) => {
            if let Some(Value::String(r)) = map.get("$ref") {
                found.insert(r.clone());
            }
            map.values().for_each(|v| refs(v, found));
        }
        Value::Array(items) => items.iter().for_each(|v| refs(v, found)),
        _ => {}
    }
}

#[test]
fn every_upstream_operation_we_document_is_identical_to_the_upstream() {
    let (ours, upstream) = (ours(), upstream());
    let mut compared = 0;
    for (path, method, op) in operations(&ours) {
        let internal = op["tags"].as_array().is_some_and(|t| t.contains(&Value::from("internal")));
        let theirs = &upstream["paths"][&path][&method];
        if internal {
            assert!(theirs.is_null(), "{method} {path} is upstream's, not internal");
            assert!(!path.starts_with("/v1/"), "internal operations stay outside /v1: {path}");
            continue;
        }
        assert!(!theirs.is_null(), "{method} {path} is neither upstream's nor tagged internal");
        assert_eq!(&op, theirs, "{method} {path} differs from the upstream");
        compared += 1;
    }
    assert!(compared >= 26, "only {compared} operations documented");
}

#[test]
fn every_schema_is_the_upstream_schema_and_every_reference_resolves() {
    let (ours, upstream) = (ours(), upstream());
    let schemas = ours["components"]["schemas"].as_object().unwrap();
    for (name, schema) in schemas {
        assert_eq!(schema, &upstream["components"]["schemas"][name], "schema {name} differs from the upstream");
    }
    let mut found = BTreeSet::new();
    refs(&ours, &mut found);
    for r in found {
        let name = r.strip_prefix("#/components/schemas/").expect("local schema references");
        assert!(schemas.contains_key(name), "{r} does not resolve");
    }
    assert_eq!(ours["components"]["securitySchemes"], upstream["components"]["securitySchemes"]);
}

#[tokio::test]
async fn every_documented_operation_is_routed_and_guarded() {
    let Some(app) = TestApp::spawn(Backend::Sqlite).await else {
        return;
    };
    for (path, method, op) in operations(&ours()) {
        let method: Method = method.to_uppercase().parse().unwrap();
        let secured = op.get("security").is_some();
        let res = app.request(method.clone(), &path, None, None).await;
        let status = res.status();
        if secured {
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path} without a key");
        } else {
            assert!(status.is_success(), "{method} {path}: {status}");
        }
    }
}
