//! The AWS side of tests and local runs: a moto server on loopback and the resources the
//! functions expect (table, KMS key, secrets), created idempotently.

use std::net::TcpListener as StdListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use aws_config::{Region, SdkConfig};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection,
    ProjectionType, ScalarAttributeType, TimeToLiveSpecification,
};

/// Region used against emulators.
pub const LOCAL_REGION: &str = "us-east-1";

/// The workspace root (where `.venv` lives).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn moto_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("MOTO_SERVER") {
        return PathBuf::from(path);
    }
    let venv = workspace_root().join(".venv/bin/moto_server");
    if venv.exists() { venv } else { PathBuf::from("moto_server") }
}

/// A free loopback port (the small race with another process taking it is acceptable here).
pub fn free_port() -> std::io::Result<u16> {
    Ok(StdListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Starts moto on `127.0.0.1:port` (see [`spawn_moto_on`]).
pub fn spawn_moto(port: u16) -> std::io::Result<String> {
    spawn_moto_on("127.0.0.1", port)
}

/// Starts moto on `host:port`. It is stopped when this process exits: a watcher shell polls
/// its parent, because a test binary's statics are never dropped.
pub fn spawn_moto_on(host: &str, port: u16) -> std::io::Result<String> {
    let moto = moto_binary();
    let script = r#"quiet="$1"; shift; "$@" >"$quiet" 2>&1 & m=$!; while kill -0 "$PPID" 2>/dev/null && kill -0 "$m" 2>/dev/null; do sleep 1; done; kill "$m" 2>/dev/null"#;
    let log = std::env::temp_dir().join(format!("moto-{port}.log"));
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg("moto-watch")
        .arg(&log)
        .arg(&moto)
        .args(["-H", host, "-p", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let endpoint = format!("http://{host}:{port}");
    wait_for_http(&format!("{endpoint}/moto-api/"), Duration::from_secs(60)).map_err(|e| {
        std::io::Error::other(format!(
            "moto server ({}) did not start on port {port}: {e}; see {} (install with `make deps`)",
            moto.display(),
            log.display()
        ))
    })?;
    Ok(endpoint)
}

/// Polls `url` with plain HTTP/1.0 GETs until it answers.
pub fn wait_for_http(url: &str, timeout: Duration) -> Result<(), String> {
    use std::io::{Read, Write};
    let parsed = url::Url::parse(url).map_err(|e| e.to_string())?;
    let addr = format!(
        "{}:{}",
        parsed.host_str().unwrap_or("127.0.0.1"),
        parsed.port_or_known_default().unwrap_or(80)
    );
    let deadline = Instant::now() + timeout;
    let mut last = String::from("not tried");
    while Instant::now() < deadline {
        match std::net::TcpStream::connect(&addr) {
            Ok(mut s) => {
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let req = format!("GET {} HTTP/1.0\r\nHost: {addr}\r\n\r\n", parsed.path());
                let mut buf = [0u8; 12];
                if s.write_all(req.as_bytes()).is_ok() && s.read(&mut buf).is_ok_and(|n| n > 0) {
                    return Ok(());
                }
                last = "no answer".into();
            }
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(last)
}

/// The emulator endpoint for this test process: `AWS_ENDPOINT_URL` if set (e.g. by
/// `make test`), otherwise a moto server started on first use.
pub fn shared_endpoint() -> Result<String, String> {
    static ENDPOINT: OnceLock<Result<String, String>> = OnceLock::new();
    ENDPOINT
        .get_or_init(|| match std::env::var("AWS_ENDPOINT_URL") {
            Ok(url) if !url.is_empty() => Ok(url),
            _ => free_port().and_then(spawn_moto).map_err(|e| e.to_string()),
        })
        .clone()
}

/// SDK configuration for an emulator at `endpoint` with placeholder credentials.
pub async fn sdk_config(endpoint: &str) -> SdkConfig {
    ms_oauth::runtime::aws_config_loader()
        .region(Region::new(LOCAL_REGION))
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
            "testing", "testing", None, None, "local",
        ))
        .endpoint_url(endpoint)
        .load()
        .await
}

/// The key-share table that goes with the token table `table` here (the template names its
/// own).
pub fn shares_table_of(table: &str) -> String {
    format!("{table}-key-shares")
}

fn key(name: &str, kind: KeyType) -> Result<KeySchemaElement, String> {
    KeySchemaElement::builder()
        .attribute_name(name)
        .key_type(kind)
        .build()
        .map_err(|e| e.to_string())
}

fn attribute(name: &str, kind: ScalarAttributeType) -> Result<AttributeDefinition, String> {
    AttributeDefinition::builder()
        .attribute_name(name)
        .attribute_type(kind)
        .build()
        .map_err(|e| e.to_string())
}

/// Creates the token table if missing (string key `pk`, on-demand, TTL on `expires_at`),
/// and its key-share table ([`shares_table_of`]).
pub async fn ensure_table(client: &aws_sdk_dynamodb::Client, name: &str) -> Result<(), String> {
    ensure_shares_table(client, &shares_table_of(name)).await?;
    if client.describe_table().table_name(name).send().await.is_ok() {
        return Ok(());
    }
    // The sparse index the refresher queries: only refreshable connections carry its key.
    let refresh_index = GlobalSecondaryIndex::builder()
        .index_name(ms_oauth::store::REFRESH_INDEX)
        .key_schema(key("refresh_queue", KeyType::Hash)?)
        .key_schema(key("refresh_due_at", KeyType::Range)?)
        .projection(
            Projection::builder()
                .projection_type(ProjectionType::Include)
                .non_key_attributes("connection_id")
                .build(),
        )
        .build()
        .map_err(|e| e.to_string())?;
    client
        .create_table()
        .table_name(name)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(attribute(ms_oauth::store::KEY_ATTRIBUTE, ScalarAttributeType::S)?)
        .attribute_definitions(attribute("refresh_queue", ScalarAttributeType::S)?)
        .attribute_definitions(attribute("refresh_due_at", ScalarAttributeType::N)?)
        .key_schema(key(ms_oauth::store::KEY_ATTRIBUTE, KeyType::Hash)?)
        .global_secondary_indexes(refresh_index)
        .send()
        .await
        .map_err(|e| format!("CreateTable: {}", ms_oauth::error::chain(&e)))?;
    client
        .update_time_to_live()
        .table_name(name)
        .time_to_live_specification(
            TimeToLiveSpecification::builder()
                .enabled(true)
                .attribute_name(ms_oauth::store::TTL_ATTRIBUTE)
                .build()
                .map_err(|e| e.to_string())?,
        )
        .send()
        .await
        .map_err(|e| format!("UpdateTimeToLive: {}", ms_oauth::error::chain(&e)))?;
    Ok(())
}

/// Creates a key-share table if missing: partition key `connection_id`, sort key
/// `share_id`, on-demand, and (as in the template) no point-in-time recovery.
pub async fn ensure_shares_table(
    client: &aws_sdk_dynamodb::Client,
    name: &str,
) -> Result<(), String> {
    use ms_oauth::store::{SHARE_PARTITION_KEY, SHARE_SORT_KEY};
    if client.describe_table().table_name(name).send().await.is_ok() {
        return Ok(());
    }
    client
        .create_table()
        .table_name(name)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(attribute(SHARE_PARTITION_KEY, ScalarAttributeType::S)?)
        .attribute_definitions(attribute(SHARE_SORT_KEY, ScalarAttributeType::S)?)
        .key_schema(key(SHARE_PARTITION_KEY, KeyType::Hash)?)
        .key_schema(key(SHARE_SORT_KEY, KeyType::Range)?)
        .send()
        .await
        .map_err(|e| format!("CreateTable: {}", ms_oauth::error::chain(&e)))?;
    Ok(())
}

/// The id of the key behind `alias`, creating both if missing.
pub async fn ensure_kms_key(client: &aws_sdk_kms::Client, alias: &str) -> Result<String, String> {
    if let Ok(out) = client.describe_key().key_id(alias).send().await
        && let Some(id) = out.key_metadata.map(|m| m.key_id)
    {
        return Ok(id);
    }
    let key = client
        .create_key()
        .description("AutoKitteh Microsoft OAuth token encryption (local)")
        .send()
        .await
        .map_err(|e| format!("CreateKey: {}", ms_oauth::error::chain(&e)))?;
    let id = key.key_metadata.map(|m| m.key_id).ok_or("CreateKey returned no key")?;
    client
        .create_alias()
        .alias_name(alias)
        .target_key_id(&id)
        .send()
        .await
        .map_err(|e| format!("CreateAlias: {}", ms_oauth::error::chain(&e)))?;
    Ok(id)
}

/// Stores `value` under secret `name` (creating or updating it) and returns its ARN.
pub async fn ensure_secret(
    client: &aws_sdk_secretsmanager::Client,
    name: &str,
    value: &str,
) -> Result<String, String> {
    if let Ok(out) = client.describe_secret().secret_id(name).send().await {
        client
            .put_secret_value()
            .secret_id(name)
            .secret_string(value)
            .send()
            .await
            .map_err(|e| format!("PutSecretValue: {}", ms_oauth::error::chain(&e)))?;
        return out.arn.ok_or_else(|| "DescribeSecret returned no ARN".to_owned());
    }
    client
        .create_secret()
        .name(name)
        .secret_string(value)
        .send()
        .await
        .map_err(|e| format!("CreateSecret: {}", ms_oauth::error::chain(&e)))?
        .arn
        .ok_or_else(|| "CreateSecret returned no ARN".to_owned())
}

/// Makes the EventBridge bus `name` (or finds it) and returns its ARN.
pub async fn ensure_event_bus(
    client: &aws_sdk_eventbridge::Client,
    name: &str,
) -> Result<String, String> {
    if let Ok(out) = client.describe_event_bus().name(name).send().await
        && let Some(arn) = out.arn
    {
        return Ok(arn);
    }
    client
        .create_event_bus()
        .name(name)
        .send()
        .await
        .map_err(|e| format!("CreateEventBus: {}", ms_oauth::error::chain(&e)))?
        .event_bus_arn
        .ok_or_else(|| "CreateEventBus returned no ARN".to_owned())
}
