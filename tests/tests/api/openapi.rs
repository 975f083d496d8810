//! Checks API responses against `functions/connection-api/openapi.yaml`.

use std::sync::OnceLock;

use ms_oauth_tests::aws::workspace_root;
use serde_json::{Value, json};

fn document() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| {
        let path = workspace_root().join("functions/connection-api/openapi.yaml");
        let yaml: Value = serde_yaml_ng::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        assert_eq!(yaml["openapi"], "3.1.0");
        // OpenAPI 3.1 schemas are JSON Schema 2020-12; point their refs at `$defs`.
        serde_json::from_str(&yaml.to_string().replace("#/components/schemas/", "#/$defs/"))
            .unwrap()
    })
}

fn resolve<'a>(doc: &'a Value, node: &'a Value) -> &'a Value {
    match node["$ref"].as_str().and_then(|r| r.strip_prefix("#/components/responses/")) {
        Some(name) => &doc["components"]["responses"][name],
        None => node,
    }
}

/// Panics unless `body` is what the document promises for `method path` → `status`.
#[track_caller]
pub fn assert_documented(method: &str, path: &str, status: u16, body: &Value) {
    let doc = document();
    let path = path.split('?').next().unwrap_or(path);
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let template = match segments.as_slice() {
        ["connections", _] => "/connections/{cid}",
        ["connections", _, "token"] => "/connections/{cid}/token",
        ["connections", _, "app"] => "/connections/{cid}/app",
        // Unknown resources answer with the documented error shape.
        _ => return validate(doc, &json!({"$ref": "#/$defs/Error"}), body, path),
    };
    let operation = &doc["paths"][template][method.to_ascii_lowercase()];
    if operation.is_null() {
        assert_eq!(status, 405, "{method} {template} is not documented");
        return validate(doc, &json!({"$ref": "#/$defs/Error"}), body, path);
    }
    let response = resolve(doc, &operation["responses"][status.to_string()]);
    assert!(!response.is_null(), "status {status} of {method} {template} is not documented");
    validate(doc, &response["content"]["application/json"]["schema"], body, path);
}

fn validate(doc: &Value, schema: &Value, body: &Value, path: &str) {
    let mut schema = schema.clone();
    schema["$defs"] = doc["components"]["schemas"].clone();
    schema["$schema"] = json!("https://json-schema.org/draft/2020-12/schema");
    let validator = jsonschema::validator_for(&schema).expect("schema compiles");
    let errors: Vec<String> = validator.iter_errors(body).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{path}: {body} does not match the document: {errors:?}");
}
