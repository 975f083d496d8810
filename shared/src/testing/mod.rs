//! Test doubles and helpers the unit, property and integration tests share (the `testing`
//! feature; never compiled into the functions): the in-memory store, the store contract both
//! stores are held to, and event helpers.

pub mod certs;
mod memory;
pub mod store_contract;

pub use crate::crypto::{FakeDataKeys, MemoryKeyShares};
pub use memory::MemoryStore;

/// Test cases per property: `PROPTEST_CASES` when set (long runs), otherwise `default`.
pub fn proptest_cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// `name=value`, the value form-encoded.
pub fn query_pair(name: &str, value: &str) -> String {
    format!("{name}={}", url::form_urlencoded::byte_serialize(value.as_bytes()).collect::<String>())
}

/// Puts `query` into an HTTP API event the one way or the other a handler may receive it:
/// as `rawQueryString` (what API Gateway sends), or only as the `queryStringParameters` map
/// (repeated names joined with commas), which lambda_http falls back to when there is no
/// raw query, so both ways a handler reads a query are exercised.
pub fn set_query(event: &mut serde_json::Value, query: &str, as_map: bool) {
    if !as_map {
        event["rawQueryString"] = serde_json::Value::String(query.to_owned());
        event["queryStringParameters"] = serde_json::json!({});
        return;
    }
    let mut map = serde_json::Map::new();
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        let joined = match map.get(k.as_ref()).and_then(|p| p.as_str()) {
            Some(prev) => format!("{prev},{v}"),
            None => v.into_owned(),
        };
        map.insert(k.into_owned(), serde_json::Value::String(joined));
    }
    if let Some(object) = event.as_object_mut() {
        object.remove("rawQueryString");
    }
    event["queryStringParameters"] = serde_json::Value::Object(map);
}

/// The request `lambda_http` makes of an event, or `None` where it fails or panics (it
/// panics on a query that is not a valid URI; on Lambda such events reach the handler with
/// the query cleared and marked, see `runtime::Readable`, tested there).
pub fn parse_event(event: &serde_json::Value) -> Option<lambda_http::Request> {
    let text = event.to_string();
    std::panic::catch_unwind(|| lambda_http::request::from_str(&text)).ok()?.ok()
}
