//! Helpers the functions' property tests share. Not part of the product's API.

/// Test cases per property: `PROPTEST_CASES` when set (long runs), otherwise `default`.
pub fn proptest_cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// `name=value`, the value form-encoded.
pub fn query_pair(name: &str, value: &str) -> String {
    format!("{name}={}", url::form_urlencoded::byte_serialize(value.as_bytes()).collect::<String>())
}

/// What API Gateway puts in `queryStringParameters` for `query` (repeated names joined with
/// commas), or an empty map, so both ways a handler reads a query can be exercised.
pub fn query_map(query: &str, with_map: bool) -> serde_json::Value {
    let mut map = serde_json::Map::new();
    if with_map {
        for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
            let joined = match map.get(k.as_ref()).and_then(|p| p.as_str()) {
                Some(prev) => format!("{prev},{v}"),
                None => v.into_owned(),
            };
            map.insert(k.into_owned(), serde_json::Value::String(joined));
        }
    }
    serde_json::Value::Object(map)
}

/// The request `lambda_http` makes of an event, or `None` where it fails or panics (it
/// panics on a query that is not a valid URI; on Lambda such events never reach a handler,
/// the runtime turns the panic into an invocation error).
pub fn parse_event(event: &serde_json::Value) -> Option<lambda_http::Request> {
    let text = event.to_string();
    std::panic::catch_unwind(|| lambda_http::request::from_str(&text)).ok()?.ok()
}
